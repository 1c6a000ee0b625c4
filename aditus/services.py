"""Issuing and revoking API tokens."""

import logging
import secrets

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from aditus.models import ApiToken

logger = logging.getLogger(__name__)


class ApiTokenRefused(Exception):
    """The credentials do not earn a token. `code` names the reason for clients; the message is for people."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


# One message for an unknown user, a wrong password, an inactive account and a missing or wrong OTP code,
# so that neither user names nor passwords can be confirmed without the second factor as well.
INVALID_CREDENTIALS = (
    "Invalid credentials. Check the username and password; super-admins must also send otp_token, "
    "the current code from their authenticator app (after a wrong code, wait a few seconds before retrying)."
)
MFA_ENROLMENT_REQUIRED = (
    "This super-admin account has no confirmed TOTP device, so it cannot get a token. Enrol an authenticator "
    "first: `manage.py create_superadmin --update --username <name>`."
)


def api_token_issue(*, user: AbstractBaseUser, otp_device: TOTPDevice | None) -> tuple[ApiToken, str]:
    """Create a token for `user`, verified by `otp_device` if given; return it and its plaintext."""
    if otp_device is not None and (otp_device.user_id != user.pk or not otp_device.confirmed):
        raise ValueError("The OTP device must be a confirmed device of the same user.")
    secret = secrets.token_urlsafe(32)
    now = timezone.now()
    token = ApiToken.objects.create(
        user=user,
        prefix=secret[: ApiToken.PREFIX_LENGTH],
        token_hash=ApiToken.hash_secret(secret),
        otp_device=otp_device,
        created_at=now,
        expires_at=now + settings.API_TOKEN_TTL,
    )
    logger.info("Issued API token #%s to user %s (mfa_verified=%s)", token.pk, user.pk, token.is_mfa_verified)
    return token, secret


def api_token_revoke(*, token: ApiToken) -> bool:
    """Revoke `token`; return False if it was already revoked."""
    revoked = token.revoke()
    if revoked:
        logger.info("Revoked API token #%s of user %s", token.pk, token.user_id)
    return revoked


def api_tokens_revoke_for_user(*, user: AbstractBaseUser) -> int:
    """Revoke every token of `user` that is still usable; return how many."""
    count = ApiToken.objects.active().filter(user=user).update(revoked_at=timezone.now())
    if count:
        logger.info("Revoked %d API token(s) of user %s", count, user.pk)
    return count


def api_token_obtain(
    *, username: str, password: str, otp_token: str = "", request: HttpRequest | None = None
) -> tuple[ApiToken, str]:
    """Check the credentials and issue a token, or raise ApiTokenRefused.

    Super-admins need a current code from one of their confirmed TOTP devices. Anyone else may send one too;
    if sent, it must be valid, and the token then counts as MFA-verified.
    """
    # Django's ModelBackend refuses inactive users and hashes a dummy password for unknown ones, so the
    # timing of a refusal does not reveal whether the user exists either.
    user = authenticate(request, username=username, password=password)
    if user is None:
        logger.warning("API token refused: invalid username or password")
        raise ApiTokenRefused(INVALID_CREDENTIALS, code="invalid_credentials")

    device = None
    if user.is_superuser and not TOTPDevice.objects.devices_for_user(user, confirmed=True).exists():
        logger.warning("API token refused: super-admin %s has no confirmed TOTP device", user.pk)
        raise ApiTokenRefused(MFA_ENROLMENT_REQUIRED, code="mfa_enrolment_required")
    if otp_token or user.is_superuser:
        device = _totp_device_verify(user=user, otp_token=otp_token)
        if device is None:
            logger.warning("API token refused: missing or wrong OTP code for user %s", user.pk)
            raise ApiTokenRefused(INVALID_CREDENTIALS, code="invalid_credentials")
    return api_token_issue(user=user, otp_device=device)


def _totp_device_verify(*, user: AbstractBaseUser, otp_token: str) -> TOTPDevice | None:
    """Return the user's confirmed TOTP device that accepts `otp_token`, if any."""
    if not otp_token:
        return None
    # No exception may leave this block: it would roll back the failure counts that throttle guessing.
    # Compromise: the API has no device picker, so a code is tried on each device in turn, and a code
    # for the second device counts as one failed attempt on the first. Super-admins rarely have two.
    with transaction.atomic():
        devices = TOTPDevice.objects.devices_for_user(user, confirmed=True).select_for_update().order_by("pk")
        for device in devices:
            # verify_token also refuses a replayed code and a device still locked after failed attempts.
            if device.verify_token(otp_token):
                return device
    return None
