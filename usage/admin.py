from django.contrib import admin
from django.urls import path

from aditus.permissions import SuperAdminOnlyAdminMixin
from usage import dashboard
from usage.alerts import alerts_requeue
from usage.models import BudgetAlert, BudgetPolicy, UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(SuperAdminOnlyAdminMixin, admin.ModelAdmin):
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

    # The "Usage statistics" page (usage.dashboard), under this admin for its URL and its view permission.
    def get_urls(self):
        view = self.admin_site.admin_view(self.dashboard_view)
        return [path("dashboard/", view, name="usage_dashboard"), *super().get_urls()]

    def dashboard_view(self, request):
        return dashboard.dashboard_view(request, model_admin=self)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(SuperAdminOnlyAdminMixin, admin.ModelAdmin):
    """Budget alerts and their delivery: read-only; failed ones can be queued again."""

    list_display = [
        "created_at",
        "provider_config",
        "period",
        "window_start",
        "threshold_percent",
        "used",
        "token_limit",
        "status",
        "attempts",
        "sent_at",
        "last_error",
    ]
    list_filter = ["status", "period", "threshold", "provider_config"]
    list_select_related = ["provider_config"]
    show_full_result_count = False
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    actions = ["send_again"]

    @admin.display(description="threshold", ordering="threshold")
    def threshold_percent(self, alert: BudgetAlert) -> str:
        return f"{alert.threshold}%"

    @admin.action(description="Send the selected alerts again (those that gave up or had no channel)")
    def send_again(self, request, queryset):
        queued = alerts_requeue(alert_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"Queued {queued} alert{'s' if queued != 1 else ''} for the alert worker.")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(BudgetPolicy)
class BudgetPolicyAdmin(SuperAdminOnlyAdminMixin, admin.ModelAdmin):
    """Per-config alert thresholds; configs without one use BUDGET_ALERT_THRESHOLDS."""

    list_display = ["provider_config", "alert_thresholds"]
    list_select_related = ["provider_config"]
