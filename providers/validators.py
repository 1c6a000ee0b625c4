import ipaddress
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback_host(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_provider_base_url(value: str) -> None:
    """Reject plain http to anything but loopback: the API key would cross the network in clear text."""
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValidationError("Enter an http(s) URL with a host, e.g. https://api.example.com/v1.")
    if parts.username or parts.password:
        raise ValidationError("Do not put credentials in the base URL; the API key has its own field.")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname) and not settings.ALLOW_INSECURE_PROVIDER_URLS:
        raise ValidationError(
            "Plain http is only allowed to a loopback host; use https "
            "(or set ALLOW_INSECURE_PROVIDER_URLS=1 for a trusted internal network)."
        )


def validate_model_name(value: str) -> None:
    """A model name goes into provider URL paths: printable ASCII without spaces, nothing else."""
    if not value or not all("!" <= char <= "~" for char in value):
        raise ValidationError(
            "Enter the provider's model id: printable characters without spaces (e.g. gemini-2.5-flash)."
        )
