"""Typed readers for settings that come from environment variables.

Each rejects a bad value with a message naming the variable, so a misconfigured deployment stops at start-up
instead of failing later on a request.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def load_env_file(path: Path) -> None:
    """Load KEY=VALUE lines from a local, git-ignored file without overriding the real environment."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        os.environ.setdefault(name.strip(), value.strip())


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_fernet_keys(name: str, *, required: bool) -> list[str]:
    """Comma-separated Fernet keys; the first encrypts, all decrypt."""
    from cryptography.fernet import Fernet

    keys = env_list(name, [])
    if not keys:
        if required:
            raise ImproperlyConfigured(
                f"{name} is required: a comma-separated list of Fernet keys (generate one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
            )
        return []
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"{name}: key number {position} is not a valid Fernet key (32 url-safe base64-encoded bytes)"
            ) from None
    return keys


def env_secret_key(name: str, *, required: bool) -> str:
    value = env_str(name)
    if value is None:
        if required:
            raise ImproperlyConfigured(f"{name} is required when DEBUG is off")
        return "django-insecure-development-only-not-for-production"
    # Django's deploy check (security.W009) asks for 50 characters with at least 5 distinct ones.
    if len(value) < 50 or len(set(value)) < 5:
        raise ImproperlyConfigured(f"{name} is malformed: use at least 50 random characters")
    return value


def env_origins(name: str) -> list[str]:
    """Comma-separated web origins (`https://app.example.com`, `http://localhost:3000`): scheme, host, optional
    port, nothing else. `*` is refused: a wildcard would let any site's scripts call the API."""
    from urllib.parse import urlsplit

    origins = env_list(name, [])
    for origin in origins:
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username
        ):
            raise ImproperlyConfigured(
                f"{name}: {origin!r} is not an origin; write scheme://host[:port] with nothing after it, "
                "e.g. https://app.example.com or http://localhost:3000"
            )
        try:
            parts.port  # noqa: B018 - a malformed port raises here
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {origin!r} has a malformed port") from None
    return origins
