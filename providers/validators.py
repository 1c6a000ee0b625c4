import ipaddress
import re
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
    try:
        port = parts.port  # urlsplit raises only when asked: a port over 65535 or not a number
    except ValueError:
        port = 0
    if port == 0:
        raise ValidationError("Enter a port from 1 to 65535, or none for the scheme's own.")
    if parts.username or parts.password:
        raise ValidationError("Do not put credentials in the base URL; the API key has its own field.")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname) and not settings.ALLOW_INSECURE_PROVIDER_URLS:
        raise ValidationError(
            "Plain http is only allowed to a loopback host; use https "
            "(or set ALLOW_INSECURE_PROVIDER_URLS=1 for a trusted internal network)."
        )


# What real model ids use (the wire/ recordings, the providers' model lists): letters, digits and `.-_:@`, as in
# gpt-4o-mini-2024-07-18, ft:gpt-4o-mini:org:custom:abc123 or claude-3-5-sonnet@20240620. A model id goes into
# the provider's URL path, so slashes, dots alone (`..`), whitespace and control characters are out; Gemini names
# its models `models/gemini-2.5-flash` as well, so that one prefix is allowed (for Gemini only:
# `validate_model_for_provider`).
_MODEL_NAME = re.compile(r"(models/)?[A-Za-z0-9][A-Za-z0-9._:@-]*")
GEMINI_MODEL_PREFIX = "models/"


def validate_model_name(value: str) -> None:
    """A model name goes into provider URL paths: a model id as the providers spell them, nothing else."""
    if not value or not _MODEL_NAME.fullmatch(value) or ".." in value:
        raise ValidationError(
            "Enter the provider's model id: letters, digits and . - _ : @ only, starting with a letter or digit "
            "(e.g. gemini-2.5-flash, gpt-4o-mini, claude-sonnet-4-5)."
        )


def validate_model_for_provider(provider_type: str, model_name: str) -> None:
    """The `models/` prefix is Gemini's way of naming a model; other providers would take it as a path."""
    if provider_type != "gemini" and model_name.startswith(GEMINI_MODEL_PREFIX):
        raise ValidationError(f"Only Gemini model ids may start with {GEMINI_MODEL_PREFIX!r}; enter the bare id.")


def validate_api_key(value: str) -> None:
    """An API key goes into an HTTP header: printable ASCII without spaces (a CR or LF would split the header)."""
    if not all("!" <= char <= "~" for char in value):
        raise ValidationError(
            "Enter the key as the provider shows it: printable ASCII characters, without spaces, line breaks or "
            "other control characters."
        )


# Where a config without a base URL sends its key: the providers' own APIs (the clients' DEFAULT_BASE_URL).
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "claude": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def key_origin(provider_type: str, base_url: str | None) -> tuple[str, str, int | None]:
    """Where a config's key is sent: (scheme, host, port) of its base URL, or of its provider's default one. A key
    entered for one origin must not be sent to another without being entered again."""
    url = base_url or DEFAULT_BASE_URLS.get(provider_type, "")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


KEY_FOR_ANOTHER_HOST = (
    "The key was entered for {old}; the changes send it to {new}. Enter the key again to send it there."
)


def key_origin_change(
    *, old_type: str, old_base_url: str | None, new_type: str, new_base_url: str | None
) -> str | None:
    """The message saying the key must be entered again, when the new settings send it to another origin."""
    old, new = key_origin(old_type, old_base_url), key_origin(new_type, new_base_url)
    if old == new:
        return None
    return KEY_FOR_ANOTHER_HOST.format(old=_origin_text(old), new=_origin_text(new))


def _origin_text(origin: tuple[str, str, int | None]) -> str:
    scheme, host, port = origin
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
