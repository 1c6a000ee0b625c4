from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import pre_save
from django_otp.plugins.otp_totp.apps import DefaultConfig


class AditusConfig(AppConfig):
    default = True  # this module has more than one AppConfig
    name = "aditus"
    verbose_name = "Access"

    def ready(self) -> None:
        from aditus import checks, signals  # noqa: F401 - importing checks registers them

        pre_save.connect(
            signals.revoke_tokens_when_the_password_changes,
            sender=settings.AUTH_USER_MODEL,
            dispatch_uid="aditus.revoke_tokens_when_the_password_changes",
        )


class AuthenticatorAppsConfig(DefaultConfig):
    """django-otp's TOTP devices, under the name the admin shows for them ("OTP_TOTP" otherwise)."""

    verbose_name = "Authenticator apps"
