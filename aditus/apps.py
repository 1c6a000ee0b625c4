from django.apps import AppConfig
from django_otp.plugins.otp_totp.apps import DefaultConfig


class AditusConfig(AppConfig):
    default = True  # this module has more than one AppConfig
    name = "aditus"
    verbose_name = "Access"


class AuthenticatorAppsConfig(DefaultConfig):
    """django-otp's TOTP devices, under the name the admin shows for them ("OTP_TOTP" otherwise)."""

    verbose_name = "Authenticator apps"
