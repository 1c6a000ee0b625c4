from django.contrib import admin

from usage.models import UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """The attempt log: read-only, and cheap on a table that grows by a row per provider call."""

    list_display = [
        "created_at",
        "request_id",
        "task",
        "provider_config",
        "provider_type",
        "model",
        "attempt",
        "outcome",
        "error_type",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms",
        "streamed",
        "user",
    ]
    list_filter = ["provider_type", "task", "outcome", "error_type", "streamed"]
    # An exact match uses the request_id index; a `contains` search would scan the table.
    search_fields = ["=request_id"]
    list_select_related = ["provider_config", "user"]
    show_full_result_count = False
    ordering = ["-created_at"]
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
