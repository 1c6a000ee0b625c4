"""Start-up refuses missing or malformed secrets with a message naming the variable."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from aditus.env import env_bool, env_fernet_keys, env_int, env_secret_key

ROOT = Path(__file__).resolve().parents[2]


def start(**env: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter with exactly these variables (and no .env.local)."""
    base = {"PATH": os.environ["PATH"], "ADITUS_ENV_FILE": "/dev/null", "DJANGO_SETTINGS_MODULE": "aditus.settings"}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD = {"SECRET_KEY": secrets.token_urlsafe(50), "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode()}


def test_production_settings_start_with_good_secrets():
    result = start(DEBUG="0", **GOOD)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FIELD_ENCRYPTION_KEYS": GOOD["FIELD_ENCRYPTION_KEYS"]}, "SECRET_KEY is required"),
        ({**GOOD, "SECRET_KEY": "short"}, "SECRET_KEY is malformed"),
        ({"SECRET_KEY": GOOD["SECRET_KEY"]}, "FIELD_ENCRYPTION_KEYS is required"),
        ({**GOOD, "FIELD_ENCRYPTION_KEYS": "not-a-key"}, "FIELD_ENCRYPTION_KEYS: key number 1 is not a valid"),
        ({**GOOD, "DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({**GOOD, "CACHE_URL": "memcached://user:hunter2-secret@cache:11211"}, "CACHE_URL must be a redis://"),
    ],
)
def test_production_start_up_stops_naming_the_variable(env, named):
    result = start(**{"DEBUG": "0", **env})
    assert result.returncode != 0
    assert named in result.stderr
    assert GOOD["SECRET_KEY"] not in result.stderr and GOOD["FIELD_ENCRYPTION_KEYS"] not in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("cache_url", "backend"),
    [
        (None, "django.core.cache.backends.db.DatabaseCache"),
        ("redis://127.0.0.1:6379/1", "django.core.cache.backends.redis.RedisCache"),
    ],
)
def test_throttle_counts_go_to_the_database_unless_cache_url_names_redis(cache_url, backend):
    env = {"DEBUG": "0", **GOOD, **({"CACHE_URL": cache_url} if cache_url else {})}
    base = {"PATH": os.environ["PATH"], "ADITUS_ENV_FILE": "/dev/null", "DJANGO_SETTINGS_MODULE": "aditus.settings"}
    code = (
        "import django; django.setup(); from django.conf import settings; print(settings.CACHES['default']['BACKEND'])"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == backend


def test_typed_readers_reject_bad_values(monkeypatch):
    monkeypatch.setenv("SOME_FLAG", "yes")
    assert env_bool("SOME_FLAG") is True
    monkeypatch.setenv("SOME_NUMBER", "ten")
    with pytest.raises(ImproperlyConfigured, match="SOME_NUMBER must be an integer"):
        env_int("SOME_NUMBER", 1)
    monkeypatch.setenv("SOME_NUMBER", "-1")
    with pytest.raises(ImproperlyConfigured, match="SOME_NUMBER must be at least 0"):
        env_int("SOME_NUMBER", 1, minimum=0)
    second = Fernet.generate_key().decode()
    monkeypatch.setenv("SOME_KEYS", f"{GOOD['FIELD_ENCRYPTION_KEYS']}, {second}")
    assert env_fernet_keys("SOME_KEYS", required=True) == [GOOD["FIELD_ENCRYPTION_KEYS"], second]
    monkeypatch.delenv("SOME_SECRET", raising=False)
    assert env_secret_key("SOME_SECRET", required=False).startswith("django-insecure")
