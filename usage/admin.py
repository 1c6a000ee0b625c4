from django.contrib import admin
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

from aditus.permissions import SuperAdminOnlyAdminMixin
from providers.models import TASK_SHORT_NAMES
from usage import dashboard
from usage.alerts import alerts_requeue
from usage.dashboard import format_usd
from usage.models import BudgetAlert, BudgetPolicy, Outcome, UsageRecord


@admin.register(UsageRecord)
class UsageRecordAdmin(SuperAdminOnlyAdminMixin, admin.ModelAdmin):
    """The attempt log: read-only, and cheap on a table that grows by a row per provider call."""

    # Compact columns, so that tokens, cost and latency show without sideways scrolling (tests/browser).
    list_display = [
        "when",
        "request_short",
        "task_short",
        "provider",
        "model",
        "try_number",
        "result",
        "tokens",
        "cost",
        "latency",
        "user",
    ]
    list_display_links = ["when"]
    # created_at and provider_config also let the usage dashboard link each of its rows to the records behind it.
    list_filter = ["created_at", "provider_type", "provider_config", "task", "outcome", "error_type", "streamed"]
    # An exact match uses the request_id index; a `contains` search would scan the table.
    search_fields = ["=request_id"]
    list_select_related = ["provider_config", "user"]
    show_full_result_count = False
    ordering = ["-created_at"]
    list_per_page = 50

    @admin.display(description="when", ordering="created_at")
    def when(self, record: UsageRecord) -> str:
        moment = timezone.localtime(record.created_at)
        return format_html('{}<br><span class="nowrap">{}</span>', f"{moment:%Y-%m-%d}", f"{moment:%H:%M:%S}")

    @admin.display(description="request")
    def request_short(self, record: UsageRecord) -> str:
        # The start of the id tells requests apart on a page; the whole id is in the title and the search box.
        return format_html('<span title="{}">{}…</span>', record.request_id, record.request_id[:8])

    @admin.display(description="task", ordering="task")
    def task_short(self, record: UsageRecord) -> str:
        return format_html(
            '<span title="{}">{}</span>', record.get_task_display(), TASK_SHORT_NAMES.get(record.task, record.task)
        )

    @admin.display(description="provider", ordering="provider_type")
    def provider(self, record: UsageRecord) -> str:
        config = record.provider_config.display_name if record.provider_config else "environment / deleted config"
        return format_html('{}<br><span class="quiet">{}</span>', config, record.get_provider_type_display())

    @admin.display(description="try", ordering="attempt")
    def try_number(self, record: UsageRecord) -> str:
        return f"#{record.attempt}"

    @admin.display(description="result", ordering="outcome")
    def result(self, record: UsageRecord) -> str:
        if record.outcome == Outcome.ERROR and record.error_type:
            return f"error: {record.get_error_type_display()}"
        return str(record.get_outcome_display())

    @admin.display(description="tokens in / out")
    def tokens(self, record: UsageRecord) -> str:
        return f"{record.input_tokens:,} / {record.output_tokens:,}"

    @admin.display(description="cost (USD)", ordering="cost_usd")
    def cost(self, record: UsageRecord) -> str:
        if record.cost_usd is None:
            return "unpriced"
        return format_usd(record.cost_usd)

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, record: UsageRecord) -> str:
        return format_html('<span class="nowrap">{}</span>', f"{record.latency_ms:,} ms")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    class Media:
        css = {"all": ["aditus/admin_lists.css"]}

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
