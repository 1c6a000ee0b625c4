"""/healthz and /readyz: unauthenticated, cheap, and answered however the container is addressed."""

import asyncio
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import AsyncClient, Client

from aditus import health

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_readiness_cache(monkeypatch):
    monkeypatch.setattr(health, "_migrations_applied_until", 0.0)


def latest_migration(app_label: str) -> str:
    return MigrationRecorder.Migration.objects.filter(app=app_label).order_by("-name").values_list("name", flat=True)[0]


def test_healthz_answers_ok_without_touching_the_database(django_assert_num_queries):
    with django_assert_num_queries(0):
        response = Client().get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-store" in response["Cache-Control"]
    assert not response.cookies


def test_readyz_answers_ok_when_the_database_is_migrated():
    response = Client().get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_probes_need_no_login_csrf_token_or_session():
    client = Client(enforce_csrf_checks=True)

    for path in ("/healthz", "/readyz"):
        for method in (client.get, client.post, client.head):
            response = method(path)
            assert response.status_code == 200, (path, method)
            assert not response.cookies


def test_probes_answer_a_host_outside_allowed_hosts_over_plain_http(settings):
    # An orchestrator probes the container by its IP over http, while production redirects to https.
    settings.ALLOWED_HOSTS = ["aditus.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    client = Client()

    for path in ("/healthz", "/readyz"):
        response = client.get(path, HTTP_HOST="10.1.2.3:8000")
        assert response.status_code == 200, path
    # Anything else is still refused for the wrong host and redirected for the right one.
    assert client.get("/admin/login/", HTTP_HOST="10.1.2.3:8000").status_code == 400
    redirect = client.get("/admin/login/", HTTP_HOST="aditus.example.com")
    assert redirect.status_code == 301 and redirect["Location"] == "https://aditus.example.com/admin/login/"


def test_probes_are_exempt_from_the_https_redirect_even_without_their_middleware(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != "aditus.middleware.HealthProbeMiddleware"]

    assert Client().get("/healthz").status_code == 200
    assert Client().get("/readyz").status_code == 200
    assert Client().get("/admin/login/").status_code == 301


def test_readyz_reports_unapplied_migrations_and_recovers_once_they_are_applied(settings):
    settings.READYZ_MIGRATIONS_CACHE_SECONDS = 0
    recorder = MigrationRecorder(connection)
    name = latest_migration("aditus")
    recorder.record_unapplied("aditus", name)

    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "reason": "1 unapplied migration(s): run `deploy/entrypoint.sh migrate`",
    }

    # Not ready is never cached: the process is ready as soon as `migrate` has run.
    recorder.record_applied("aditus", name)
    assert Client().get("/readyz").status_code == 200


def test_readyz_trusts_a_migrated_database_for_a_while_and_then_only_pings_it(settings, django_assert_num_queries):
    settings.READYZ_MIGRATIONS_CACHE_SECONDS = 60
    assert Client().get("/readyz").status_code == 200

    MigrationRecorder(connection).record_unapplied("aditus", latest_migration("aditus"))
    with django_assert_num_queries(1):  # SELECT 1
        response = Client().get("/readyz")
    assert response.status_code == 200


def test_readyz_says_the_database_is_unreachable_without_the_drivers_message():
    failure = OperationalError('connection to server at "db.internal" (10.0.0.5), port 5432 failed: user "aditus"')
    with mock.patch.object(connection, "cursor", side_effect=failure):
        response = Client().get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "database unreachable (OperationalError)"}
    assert b"db.internal" not in response.content and b"aditus" not in response.content


def test_probes_answer_under_asgi_too():
    async def probe():
        client = AsyncClient()
        responses = await client.get("/healthz", headers={"X-Request-ID": "probe-1"}), await client.get("/readyz")
        # The check ran in asgiref's worker thread, with a connection of its own: let the test database go.
        await sync_to_async(lambda: connection.close())()
        return responses

    live, ready = asyncio.run(probe())

    assert (live.status_code, live.json(), live["X-Request-ID"]) == (200, {"status": "ok"}, "probe-1")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
