"""Deployment checks, login lockout, throttles and the Content-Security-Policy."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.test import Client
from rest_framework.throttling import ScopedRateThrottle

from aditus.models import ApiToken
from aditus.services import api_token_issue
from tests.auth_fixtures import PASSWORD, bearer, totp_code

ROOT = Path(__file__).resolve().parents[2]
ADMIN_LOGIN = "/admin/login/?next=/admin/"
TOKEN_URL = "/api/v1/auth/token"


def production_env(**overrides: str) -> dict[str, str]:
    """The environment of a production process: DEBUG off, real keys, a host name, nothing from the caller."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "aditus.example.com",
        "DATABASE_URL": "sqlite:////tmp/aditus-never-created.sqlite3",
        "FORWARDED_ALLOW_IPS": "10.0.0.0/8",  # the load balancer's network
        **overrides,
    }


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


# --- check --deploy and production defaults


def test_the_deployment_check_finds_nothing_in_production():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_the_deployment_check_does_complain_when_https_is_switched_off():
    # Shows that the check above can fail: it runs Django's deploy checks with these settings.
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env=production_env(SECURE_SSL_REDIRECT="0", SECURE_COOKIES="0")
    )

    assert result.returncode != 0
    for check in ("security.W008", "security.W012", "security.W016"):
        assert check in result.stderr


def production_settings(**overrides: str) -> dict:
    names = [
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
        "SECURE_PROXY_SSL_HEADER",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SILENCED_SYSTEM_CHECKS",
        "STORAGES",
        "X_FRAME_OPTIONS",
    ]
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{name: getattr(settings, name) for name in {names!r}}}))"
    )
    env = {**production_env(**overrides), "DJANGO_SETTINGS_MODULE": "aditus.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_deployment_check_warns_when_proxy_headers_trust_only_the_default_address():
    env = production_env()
    del env["FORWARDED_ALLOW_IPS"]

    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert result.returncode != 0
    assert "aditus.W001" in result.stderr and "FORWARDED_ALLOW_IPS" in result.stderr
    # Nothing in front of aditus, or a proxy on this host named on purpose: no warning.
    for quiet in (production_env(PROXY_HEADERS="0"), production_env(FORWARDED_ALLOW_IPS="127.0.0.1")):
        if "FORWARDED_ALLOW_IPS" not in quiet or quiet.get("PROXY_HEADERS") == "0":
            quiet.pop("FORWARDED_ALLOW_IPS", None)
        assert manage("check", "--deploy", "--fail-level", "WARNING", env=quiet).returncode == 0


def test_production_defaults_to_https_hsts_and_secure_cookies():
    values = production_settings()

    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_HSTS_SECONDS"] == 31536000 and values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert values["SECURE_HSTS_PRELOAD"] is False and values["SILENCED_SYSTEM_CHECKS"] == ["security.W021"]
    assert values["SESSION_COOKIE_SECURE"] is True and values["CSRF_COOKIE_SECURE"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] is None
    assert values["X_FRAME_OPTIONS"] == "DENY"
    assert values["STORAGES"]["staticfiles"]["BACKEND"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"


def test_operators_can_opt_into_preload_and_a_trusted_forwarded_proto():
    values = production_settings(SECURE_HSTS_PRELOAD="1", TRUST_X_FORWARDED_PROTO="1", SECURE_HSTS_SECONDS="600")

    assert values["SECURE_HSTS_PRELOAD"] is True and values["SILENCED_SYSTEM_CHECKS"] == []
    assert values["SECURE_HSTS_SECONDS"] == 600
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


# --- admin login lockout (django-axes)


def admin_login(client, user, device, password=PASSWORD):
    return client.post(ADMIN_LOGIN, {"username": user.username, "password": password, "otp_token": totp_code(device)})


def test_axes_checks_every_authentication_first():
    assert django_settings.AUTHENTICATION_BACKENDS[0] == "axes.backends.AxesStandaloneBackend"
    assert django_settings.AXES_FAILURE_LIMIT == 5


@pytest.mark.django_db
def test_five_wrong_passwords_lock_the_admin_login_even_for_the_right_password_and_code(superadmin, superadmin_device):
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(4):
        response = admin_login(client, superadmin, superadmin_device, password="wrong-password")
        assert response.status_code == 200  # the form again, with its error
    fifth = admin_login(client, superadmin, superadmin_device, password="wrong-password")
    assert fifth.status_code == 429

    response = admin_login(client, superadmin, superadmin_device)

    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert response["Retry-After"] == "3600"
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert client.get("/admin/").status_code == 302  # still not logged in
    attempt = AccessAttempt.objects.get(username="ada")
    assert attempt.ip_address == "203.0.113.7" and attempt.failures_since_start >= 5
    assert "otp_token=********" in attempt.post_data and PASSWORD not in attempt.post_data


@pytest.mark.django_db
def test_the_lockout_is_per_username_and_address(superadmin, superadmin_device, ordinary_user):
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(5):
        admin_login(attacker, superadmin, superadmin_device, password="wrong-password")

    # Nobody can lock a super-admin out from elsewhere, and the attacker's address can still try other accounts.
    owner = Client(REMOTE_ADDR="198.51.100.2")
    assert admin_login(owner, superadmin, superadmin_device).status_code == 302
    other = attacker.post(ADMIN_LOGIN, {"username": "olivia", "password": "wrong-password", "otp_token": "123456"})
    assert other.status_code == 200


@pytest.mark.django_db
def test_a_successful_login_forgets_the_earlier_failures(superadmin, superadmin_device):
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(4):
        admin_login(client, superadmin, superadmin_device, password="wrong-password")
    assert admin_login(client, superadmin, superadmin_device).status_code == 302
    client.logout()

    for _ in range(4):
        assert admin_login(client, superadmin, superadmin_device, password="wrong-password").status_code == 200
    superadmin_device.refresh_from_db()
    superadmin_device.last_t = -1  # the same 30-second step: let the code be used once more
    superadmin_device.save(update_fields=["last_t"])
    assert admin_login(client, superadmin, superadmin_device).status_code == 302


@pytest.mark.django_db
def test_the_token_endpoint_locks_out_too_and_answers_in_json(api_client, superadmin, superadmin_device):
    for _ in range(5):
        response = api_client.post(TOKEN_URL, {"username": "ada", "password": "wrong-password"}, format="json")
    assert response.status_code == 429

    response = api_client.post(
        TOKEN_URL,
        {"username": "ada", "password": PASSWORD, "otp_token": totp_code(superadmin_device)},
        format="json",
    )

    assert response.status_code == 429
    assert response.json()["code"] == "locked_out" and "Too many failed logins" in response.json()["detail"]
    assert response["Retry-After"] == "3600"
    assert not ApiToken.objects.exists()


# --- throttles


@pytest.mark.django_db
def test_rotating_x_forwarded_for_gets_no_more_attempts_through(api_client, ordinary_user, monkeypatch):
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "auth": "3/min"})
    statuses = []
    for attempt in range(12):
        response = api_client.post(
            TOKEN_URL,
            {"username": "olivia", "password": "not-the-password"},
            format="json",
            HTTP_X_FORWARDED_FOR=f"203.0.113.{attempt}, 198.51.100.{attempt}",
        )
        statuses.append(response.status_code)

    assert statuses == [400] * 3 + [429] * 9


@pytest.mark.django_db
def test_throttle_counts_are_kept_where_every_process_reads_them(api_client, ordinary_user, monkeypatch):
    from django.core.cache import cache
    from django.db import connection

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "auth": "3/min"})
    for _ in range(2):
        api_client.post(TOKEN_URL, {"username": "olivia", "password": "wrong"}, format="json")

    # The database cache: a row in its table, which every process and machine of the deployment reads.
    assert django_settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.db.DatabaseCache"
    with connection.cursor() as cursor:
        cursor.execute("SELECT cache_key FROM aditus_cache")
        keys = [row[0] for row in cursor.fetchall()]
    assert len(keys) == 1 and "throttle_auth_" in keys[0] and "127.0.0.1" in keys[0]
    assert len(cache.get(keys[0].split(":", 2)[-1])) == 2


@pytest.mark.django_db
def test_throttle_counts_are_kept_in_redis_when_cache_url_names_it(api_client, ordinary_user, monkeypatch, settings):
    redis = pytest.importorskip("redis")
    prefix = f"aditus-test-{secrets.token_hex(4)}"
    location = "redis://127.0.0.1:6379/0"
    server = redis.Redis.from_url(location)
    try:
        server.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": location,
            "KEY_PREFIX": prefix,
        }
    }
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "auth": "2/min"})
    try:
        statuses = [
            api_client.post(
                TOKEN_URL,
                {"username": "olivia", "password": "wrong"},
                format="json",
                HTTP_X_FORWARDED_FOR=f"192.0.2.{n}",
            ).status_code
            for n in range(4)
        ]

        assert statuses == [400, 400, 429, 429]
        assert len(server.keys(f"{prefix}:*")) == 1
    finally:
        for key in server.keys(f"{prefix}:*"):
            server.delete(key)


@pytest.mark.django_db
def test_logout_is_throttled_per_user(api_client, ordinary_user, monkeypatch):
    # DRF copies the rates into the throttle class at import, so override_settings cannot reach them.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "auth": "3/min"})
    secrets_ = [api_token_issue(user=ordinary_user, otp_device=None)[1] for _ in range(4)]
    for secret in secrets_[:3]:
        assert api_client.post("/api/v1/auth/logout", **bearer(secret)).status_code == 204

    response = api_client.post("/api/v1/auth/logout", **bearer(secrets_[3]))

    assert response.status_code == 429
    assert ApiToken.objects.filter(revoked_at__isnull=True).count() == 1


# --- Content-Security-Policy


def csp_directives(response) -> dict[str, str]:
    policy = response["Content-Security-Policy"]
    return {part.split()[0]: " ".join(part.split()[1:]) for part in policy.split(";") if part.strip()}


@pytest.mark.django_db
def test_admin_pages_carry_a_policy_without_inline_script(superadmin_session_client):
    response = superadmin_session_client.get("/admin/")
    directives = csp_directives(response)

    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert (
        "'unsafe-inline'" not in directives["script-src"] and "'unsafe-eval'" not in response["Content-Security-Policy"]
    )
    assert "Content-Security-Policy" in Client().get("/admin/login/")


INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>\s*\S", re.IGNORECASE)
EVENT_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/providers/providerconfig/",
        "/admin/providers/providerconfig/add/",
        "/admin/auth/user/",
        "/admin/password_change/",
    ],
)
def test_the_admin_has_no_inline_script_for_the_policy_to_block(superadmin_session_client, path):
    response = superadmin_session_client.get(path)

    assert response.status_code == 200
    html = response.content.decode()
    assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html).group(0)
    assert not EVENT_HANDLER.search(html), EVENT_HANDLER.search(html).group(0)
    assert "javascript:" not in html


@pytest.mark.django_db
def test_json_responses_get_no_policy(api_client, ordinary_user):
    response = api_client.post(TOKEN_URL, {"username": "olivia", "password": PASSWORD}, format="json")

    assert response.status_code == 201
    assert "Content-Security-Policy" not in response
