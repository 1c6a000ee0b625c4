import json

from django.contrib import admin, messages
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.db.models import BigIntegerField, Exists, Max, OuterRef, Q
from django.db.models.functions import Cast
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from aditus.permissions import SuperAdminOnlyAdminMixin
from providers import services
from providers.forms import ProviderConfigAdminForm
from providers.models import TASK_FLAGS, TASK_SHORT_NAMES, AuditEntry, ProviderConfig, Task


class ServesTaskFilter(admin.SimpleListFilter):
    """One filter for the four task flags."""

    title = "task served"
    parameter_name = "serves"

    def lookups(self, request, model_admin):
        return Task.choices

    def queryset(self, request, queryset):
        if self.value() in TASK_FLAGS:
            return queryset.filter(**{TASK_FLAGS[self.value()]: True})
        return queryset


# The form fields a credential test depends on: a change to any of them makes the test one of unsaved settings.
TESTED_FORM_FIELDS = ("provider_type", "model_name", "new_api_key", "base_url", "request_timeout_seconds")


@admin.register(ProviderConfig)
class ProviderConfigAdmin(SuperAdminOnlyAdminMixin, admin.ModelAdmin):
    form = ProviderConfigAdminForm
    change_form_template = "admin/providers/providerconfig/change_form.html"
    # Ten facts per config, compact enough to show without sideways scrolling at 1,400 px (tests/browser).
    list_display = [
        "name",
        "provider",
        "model_used",
        "task_list",
        "tokens_today",
        "masked_key",
        "last_test",
        "priority_weight",
    ]
    list_filter = ["provider_type", "is_active", "last_test_ok", ServesTaskFilter]
    search_fields = ["display_name", "model_name"]
    list_select_related = ["updated_by"]
    actions = ["test_credentials", "activate", "deactivate"]
    readonly_fields = [
        "masked_key",
        "key_updated_at",
        "created_at",
        "created_by",
        "updated_at",
        "updated_by",
        "last_tested_at",
        "last_test_ok",
        "last_test_error",
    ]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "provider_type",
                    "display_name",
                    "model_name",
                    "new_api_key",
                    "base_url",
                    "is_active",
                ]
            },
        ),
        ("Tasks served", {"fields": list(TASK_FLAGS.values())}),
        ("Routing", {"fields": ["priority", "weight", "request_timeout_seconds"]}),
        (
            "Limits and prices",
            {
                "fields": [
                    "daily_token_limit",
                    "monthly_token_limit",
                    "input_price_per_million",
                    "output_price_per_million",
                ]
            },
        ),
        ("Bookkeeping", {"classes": ["collapse"], "fields": readonly_fields}),
    ]

    # Short headers: the admin never wraps a column header.
    @admin.display(description="name", ordering="display_name")
    def name(self, config: ProviderConfig) -> str:
        # Inactive configs are marked here rather than in a column of their own, for the list to fit 1,400 px.
        if config.is_active:
            return config.display_name
        return format_html('{} <span class="config-inactive">inactive</span>', config.display_name)

    @admin.display(description="provider", ordering="provider_type")
    def provider(self, config: ProviderConfig) -> str:
        return config.get_provider_type_display()

    @admin.display(description="model", ordering="model_name")
    def model_used(self, config: ProviderConfig) -> str:  # not `model`, which is the ModelAdmin's model
        return config.model_name

    @admin.display(description="tasks")
    def task_list(self, config: ProviderConfig) -> str:
        tasks = config.tasks
        if not tasks:
            return "—"
        full = ", ".join(str(Task(task).label) for task in tasks)
        short = "all four" if len(tasks) == len(TASK_FLAGS) else ", ".join(TASK_SHORT_NAMES[task] for task in tasks)
        return format_html('<span title="{}">{}</span>', full, short)

    @admin.display(description="priority / weight", ordering="priority")
    def priority_weight(self, config: ProviderConfig) -> str:
        return f"{config.priority} / {config.weight}"

    @admin.display(description="tokens today / limit")
    def tokens_today(self, config: ProviderConfig) -> str:
        limit = "∞" if config.daily_token_limit is None else f"{config.daily_token_limit:,}"
        if config.daily_token_limit is None and config.monthly_token_limit is None:
            return f"— / {limit}"  # without a limit, tokens are not counted per window (see the usage statistics)
        return f"{getattr(config, 'tokens_used_today', 0):,} / {limit}"

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        # Today's token counters of the page's configs in one query, through the reverse relation of the usage
        # app's TokenCounter, so that providers still imports nothing from usage.
        configs = list(changelist.result_list)
        today = timezone.localdate(timezone=timezone.get_default_timezone())
        used = dict(
            ProviderConfig.objects.filter(
                pk__in=[config.pk for config in configs],
                token_counters__period="day",
                token_counters__window_start=today,
            ).values_list("pk", "token_counters__used")
        )
        for config in configs:
            config.tokens_used_today = used.get(config.pk, 0)
        return changelist

    @admin.display(description="key")
    def masked_key(self, config: ProviderConfig) -> str:
        return config.masked_key

    @admin.display(description="last test", ordering="last_tested_at")
    def last_test(self, config: ProviderConfig) -> str:
        if config.last_test_ok is None:
            return mark_safe('<span class="last-test-never">never</span>')  # noqa: S308 (a constant)
        when = naturaltime(config.last_tested_at) if config.last_tested_at else ""
        if config.last_test_ok:
            return format_html('<span class="last-test-ok" title="{}">✔ ok</span>', when)
        # The error type only; the whole message is in the title, for the list to stay narrow.
        kind = config.last_test_error.split(":", 1)[0]
        return format_html(
            '<span class="last-test-failed" title="{}: {}">✖ failed</span> <span class="last-test-kind">({})</span>',
            when,
            config.last_test_error,
            kind,
        )

    def save_model(self, request, obj, form, change):
        rotated = change and bool(form.cleaned_data.get("new_api_key")) and "new_api_key" in form.changed_data
        if not change:
            obj.created_by = request.user
        obj.updated_by = request.user
        super().save_model(request, obj, form, change)
        if rotated:
            services.audit_log(user=request.user, config=obj, action_flag=CHANGE, message="Rotated the API key.")

    def construct_change_message(self, request, form, formsets, add=False):
        """Django's message, with the old and new value of each changed field but the key (see the audit page)."""
        if add or not form.changed_data:
            return super().construct_change_message(request, form, formsets, add)
        changes = {
            name: (form.initial.get(name), form.cleaned_data.get(name))
            for name in form.changed_data
            if name != "new_api_key"
        }
        secret = ["api_key"] if "new_api_key" in form.changed_data else []
        return services.change_message(changes=changes, secret_fields=secret)

    # Actions -------------------------------------------------------------------------------------------------

    @admin.action(description="Test credentials")
    def test_credentials(self, request, queryset):
        for config in queryset:
            result = services.provider_config_test(config=config, user=request.user)
            level = messages.SUCCESS if result.ok else messages.ERROR
            self.message_user(request, f"{config}: {result.summary} — {result.message}", level)

    @admin.action(description="Activate")
    def activate(self, request, queryset):
        changed = services.provider_configs_set_active(configs=queryset, user=request.user, active=True)
        self.message_user(request, f"Activated {changed} configuration(s).", messages.SUCCESS)

    @admin.action(description="Deactivate")
    def deactivate(self, request, queryset):
        changed = services.provider_configs_set_active(configs=queryset, user=request.user, active=False)
        self.message_user(request, f"Deactivated {changed} configuration(s).", messages.SUCCESS)

    # Test before saving -----------------------------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view(require_POST(self.test_form_view))
        return [
            path("test-credentials/", view, name="providers_providerconfig_test_new"),
            path("<int:pk>/test-credentials/", view, name="providers_providerconfig_test_existing"),
            *super().get_urls(),
        ]

    def test_form_view(self, request, pk: int | None = None):
        """Test what is typed into the form, without saving anything. Answers JSON for the form's script.

        On a saved config's form the test is audited against the config, and recorded on it when the form has no
        unsaved change to what the test depends on (services.provider_config_form_test).
        """
        instance = get_object_or_404(ProviderConfig, pk=pk) if pk else None
        allowed = self.has_change_permission(request, instance) if instance else self.has_add_permission(request)
        if not allowed:
            return JsonResponse({"ok": False, "message": "Permission denied."}, status=403)
        form = ProviderConfigAdminForm(request.POST, instance=instance)
        # Uniqueness of the name is a question for "Save", not for a credential test.
        form.fields["display_name"].required = False
        if not form.is_valid():
            errors = {k: v for k, v in form.errors.get_json_data().items() if k != "display_name"}
            if errors:
                return JsonResponse({"ok": False, "message": "Fix the form first.", "errors": errors}, status=400)
        data = form.cleaned_data
        tested = {
            "provider_type": data["provider_type"],
            "model_name": data["model_name"],
            "base_url": data.get("base_url", ""),
            "timeout": float(data.get("request_timeout_seconds") or 30),
        }
        if instance is None:
            result = services.provider_settings_test(
                user=request.user,
                api_key=data["new_api_key"],
                display_name=data.get("display_name") or "",
                **tested,
            )
        else:
            result = services.provider_config_form_test(
                config=instance,
                user=request.user,
                api_key=data.get("new_api_key") or None,
                unsaved_changes=[
                    str(form.fields[name].label) for name in TESTED_FORM_FIELDS if name in form.changed_data
                ],
                **tested,
            )
        return JsonResponse(result.as_dict())

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        name = (
            "providers_providerconfig_test_existing"
            if obj is not None and obj.pk
            else "providers_providerconfig_test_new"
        )
        args = [obj.pk] if obj is not None and obj.pk else []
        context["test_credentials_url"] = reverse(f"admin:{name}", args=args, current_app=self.admin_site.name)
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    class Media:
        js = ["providers/test_credentials.js"]
        css = {"all": ["aditus/admin_lists.css", "providers/provider_admin.css"]}


# The audit log ------------------------------------------------------------------------------------------------

# What an audit entry records, told from its flag and its message (providers.services writes the messages).
AUDIT_ACTIONS = {
    "created": "created",
    "updated": "updated",
    "deleted": "deleted",
    "tested": "credentials tested",
    "rotated": "key rotated",
}


def audit_action(entry: LogEntry) -> str:
    """The kind of an entry: one of AUDIT_ACTIONS."""
    message = entry.change_message
    if entry.action_flag == ADDITION:
        return "created"
    if entry.action_flag == DELETION:
        return "deleted"
    if message.startswith("Rotated the API key") or message.startswith("Tested a new API key"):
        return "rotated"
    if message.startswith("Tested"):
        return "tested"
    return "updated"


def _audit_action_filter(action: str) -> Q:
    rotated = Q(change_message__startswith="Rotated the API key") | Q(change_message__startswith="Tested a new API key")
    if action == "created":
        return Q(action_flag=ADDITION)
    if action == "deleted":
        return Q(action_flag=DELETION)
    if action == "rotated":
        return Q(action_flag=CHANGE) & rotated
    if action == "tested":
        return Q(action_flag=CHANGE, change_message__startswith="Tested") & ~rotated
    return Q(action_flag=CHANGE) & ~rotated & ~Q(change_message__startswith="Tested")


class AuditActionFilter(admin.SimpleListFilter):
    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        return list(AUDIT_ACTIONS.items())

    def queryset(self, request, queryset):
        if self.value() in AUDIT_ACTIONS:
            return queryset.filter(_audit_action_filter(self.value()))
        return queryset


class AuditConfigFilter(admin.SimpleListFilter):
    """Each config that has entries, deleted ones included (under the name their last entry gives them)."""

    title = "configuration"
    parameter_name = "config"
    UNSAVED = "unsaved"

    def lookups(self, request, model_admin):
        entries = model_admin.get_queryset(request)
        last = entries.exclude(object_id=None).values("object_id").annotate(last=Max("pk")).values("last")
        names = dict(entries.filter(pk__in=last).values_list("object_id", "object_repr"))
        ids = [int(object_id) for object_id in names if object_id.isdigit()]
        live = {str(pk) for pk in ProviderConfig.objects.filter(pk__in=ids).values_list("pk", flat=True)}
        choices = sorted(
            ((object_id, name if object_id in live else f"{name} (deleted)") for object_id, name in names.items()),
            key=lambda choice: (choice[0] not in live, choice[1].lower()),
        )
        return [*choices, (self.UNSAVED, "tests of unsaved settings")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == self.UNSAVED:
            return queryset.filter(object_id=None)
        if value:
            return queryset.filter(object_id=value)
        return queryset


@admin.register(AuditEntry)
class AuditEntryAdmin(SuperAdminOnlyAdminMixin, admin.ModelAdmin):
    """Every change to a provider configuration, by whom and when: read-only, never a key."""

    list_display = ["action_time", "user", "configuration", "action", "details"]
    list_filter = [AuditConfigFilter, ("user", admin.RelatedOnlyFieldListFilter), AuditActionFilter, "action_time"]
    list_select_related = ["user"]
    search_fields = ["object_repr", "user__username"]
    date_hierarchy = "action_time"
    ordering = ["-action_time", "-pk"]
    show_full_result_count = False
    list_per_page = 100
    list_display_links = None

    def get_queryset(self, request):
        entries = super().get_queryset(request).filter(content_type=ContentType.objects.get_for_model(ProviderConfig))
        # Whether the config still exists, in the list's one query (object_id is text; ours are always digits).
        config = ProviderConfig.objects.filter(pk=Cast(OuterRef("object_id"), BigIntegerField()))
        return entries.annotate(config_exists=Exists(config))

    @admin.display(description="configuration", ordering="object_repr")
    def configuration(self, entry: LogEntry) -> str:
        if entry.object_id is None:
            return entry.object_repr
        if not entry.config_exists:
            return format_html('{} <span class="audit-deleted">(deleted)</span>', entry.object_repr)
        url = reverse("admin:providers_providerconfig_change", args=[entry.object_id], current_app=self.admin_site.name)
        return format_html('<a href="{}">{}</a>', url, entry.object_repr)

    @admin.display(description="action")
    def action(self, entry: LogEntry) -> str:
        return AUDIT_ACTIONS[audit_action(entry)]

    @admin.display(description="details")
    def details(self, entry: LogEntry) -> str:
        """The message; for an update, each field's old and new value (the key is named, never shown)."""
        try:
            parsed = json.loads(entry.change_message) if entry.change_message.startswith("[") else None
        except json.JSONDecodeError:
            parsed = None
        changed = [part["changed"] for part in parsed or [] if isinstance(part, dict) and "changed" in part]
        if not changed:
            return entry.get_change_message() or "—"
        lines = []
        for part in changed:
            values = part.get("values", {})
            for label in part.get("fields", []):
                if label in values:
                    old, new = values[label]
                    lines.append(format_html("{}: {} → {}", label, _shown(old), _shown(new)))
                else:
                    lines.append(format_html("{} changed", label))
        return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines))  # noqa: S308 (a constant)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # The record of who changed what stays.
        return False


def _shown(value) -> str:
    return "empty" if value in (None, "") else str(value)
