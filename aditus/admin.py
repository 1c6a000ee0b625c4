from django.contrib import admin, messages

from aditus.models import ApiToken
from aditus.permissions import SuperAdminOnlyAdminMixin
from aditus.services import api_token_revoke


@admin.register(ApiToken)
class ApiTokenAdmin(SuperAdminOnlyAdminMixin, admin.ModelAdmin):
    """Tokens are issued by the API only; here they can be inspected and revoked. The hash is never shown."""

    list_display = ("prefix", "user", "created_at", "expires_at", "last_used_at", "revoked_at", "verified")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "expires_at", "created_at")
    list_select_related = ("user", "otp_device")
    search_fields = ("prefix", "user__username")
    show_full_result_count = False
    fields = (
        "prefix",
        "user",
        "otp_device",
        "verified",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = fields
    actions = ("revoke",)

    @admin.display(boolean=True, description="MFA verified")
    def verified(self, obj: ApiToken) -> bool:
        return obj.is_mfa_verified

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        revoked = sum(api_token_revoke(token=token) for token in queryset)
        skipped = queryset.count() - revoked
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} token(s) were already revoked.", messages.WARNING)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Revoked tokens stay as a record of who had access when.
        return False
