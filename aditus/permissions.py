"""Who counts as a super-admin: an active superuser whose request is verified by a TOTP device."""

from django.http import HttpRequest
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from aditus.models import ApiToken

NOT_SUPERADMIN = "Only super-admins may do this."
MFA_REQUIRED = (
    "MFA verification is required: sign in to the admin with your authenticator code, or use a bearer token "
    "obtained from /api/v1/auth/token with otp_token."
)


def is_superuser(request: HttpRequest | Request) -> bool:
    """Tell whether the request comes from an active superuser, verified or not."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_superuser)


def is_mfa_verified(request: HttpRequest | Request) -> bool:
    """Tell whether a confirmed TOTP device of the request's user verified this request."""
    user = request.user
    token = getattr(request, "auth", None)
    if isinstance(token, ApiToken):
        return token.user_id == user.pk and token.is_mfa_verified
    # A session: OTPMiddleware has checked that the device in the session is confirmed and the user's own.
    return bool(getattr(user, "is_verified", None) and user.is_verified())


def is_verified_superadmin(request: HttpRequest | Request) -> bool:
    """Tell whether the request comes from a super-admin verified by MFA (DRF or plain Django request)."""
    return is_superuser(request) and is_mfa_verified(request)


class IsVerifiedSuperAdmin(BasePermission):
    """Allow only super-admins verified by MFA, by session or by bearer token.

    Anonymous callers get 401 (DRF's NotAuthenticated), everyone else a 403 naming what is missing.
    """

    message = NOT_SUPERADMIN
    code = "not_superadmin"

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if not is_superuser(request):
            return False
        if not is_mfa_verified(request):
            # DRF makes a permission instance per request, so setting these does not leak between requests.
            self.message = MFA_REQUIRED
            self.code = "mfa_required"
            return False
        return True


class SuperAdminOnlyAdminMixin:
    """Admin pages for verified super-admins only, whatever model permissions a staff account has been given.

    The seed lets only super-admins manage providers, and the REST API already refuses everyone else; Django's
    admin would otherwise admit any staff account holding the model's permissions. Mix in before ModelAdmin.
    """

    def has_module_permission(self, request) -> bool:
        return is_verified_superadmin(request) and super().has_module_permission(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return is_verified_superadmin(request) and super().has_view_permission(request, obj)

    def has_add_permission(self, request, *args) -> bool:
        return is_verified_superadmin(request) and super().has_add_permission(request, *args)

    def has_change_permission(self, request, obj=None) -> bool:
        return is_verified_superadmin(request) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return is_verified_superadmin(request) and super().has_delete_permission(request, obj)
