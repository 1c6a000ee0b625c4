"""The task endpoints' lean ASGI path (runtime.asgi), driven as uvicorn drives `aditus.asgi.application`.

The other task tests go through Django's test client, i.e. the full middleware stack; these check that the short
stack production serves the task endpoints with still enforces what the full one does: authentication, CSRF for
sessions, ALLOWED_HOSTS, the https redirect and the security headers.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils.crypto import get_random_string

from runtime.asgi import LeanASGIHandler
from tests.asgi import asgi_request, http_scope
from tests.tasks.conftest import COVER_LETTER, db_with_threads, usage_rows

pytestmark = db_with_threads

LETTER = {"profile": "Ada Lovelace, Python developer.", "job": "Backend engineer at Acme."}


def lean_handler() -> LeanASGIHandler:
    from usage.metrics import task_response_observe

    return LeanASGIHandler(
        path_prefixes=django_settings.TASK_PATH_PREFIXES,
        middleware=django_settings.TASK_MIDDLEWARE,
        observe=task_response_observe,
    )


def asgi_call(path: str, *, data=None, headers=None, host="testserver", scheme="http", method="POST", application=None):
    """Send one request through aditus.asgi.application (or `application`); return (status, headers, body)."""
    if application is None:
        from aditus.asgi import application

    body = json.dumps(data if data is not None else LETTER).encode() if method == "POST" else b""
    return asgi_request(application, http_scope(path, method=method, headers=headers, host=host, scheme=scheme), body)


def test_the_task_paths_take_the_lean_path_and_nothing_else_does():
    is_task_path = lean_handler().handles

    def scope(path, root_path=""):
        return {"type": "http", "path": path, "root_path": root_path}

    for path in (
        "/api/v1/job-extractor/extract",
        "/api/v1/job-extractor/validate-image",
        "/api/v1/cv-drafter/draft",
        "/api/v1/cover-letter/generate",
    ):
        assert is_task_path(scope(path))
        assert is_task_path(scope("/gateway" + path, root_path="/gateway"))
    for path in ("/api/v1/auth/token", "/api/v1/super-admin/providers/", "/admin/", "/metrics", "/healthz"):
        assert not is_task_path(scope(path))
    assert not is_task_path({"type": "websocket", "path": COVER_LETTER})


def test_a_bearer_call_is_served_with_the_security_headers(task_config, ordinary_user_token):
    config = task_config("openai")

    status, headers, body = asgi_call(COVER_LETTER, headers={"Authorization": f"Bearer {ordinary_user_token}"})

    assert status == 200, body
    assert json.loads(body)["provider"]["config_id"] == config.pk
    assert headers["x-request-id"] and headers["x-gateway-time-ms"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert len(usage_rows()) == 1


def test_the_answer_goes_out_before_its_usage_row_is_saved_and_the_row_is_saved_all_the_same(
    task_config, ordinary_user_token, monkeypatch
):
    task_config("openai")
    from usage import services

    events: list[str] = []
    save = services.attempts_save_async

    async def attempts_save_async(attempts):
        events.append("saved")
        return await save(attempts)

    monkeypatch.setattr(services, "attempts_save_async", attempts_save_async)

    async def application(scope, receive, send):
        async def noting_send(message):
            if message["type"] == "http.response.body" and not message.get("more_body"):
                events.append("answered")
            await send(message)

        from aditus.asgi import application as real

        await real(scope, receive, noting_send)

    # asgi_call's client reports a disconnect as soon as the answer is complete, as uvicorn does.
    status, _, body = asgi_call(
        COVER_LETTER, headers={"Authorization": f"Bearer {ordinary_user_token}"}, application=application
    )

    assert status == 200, body
    assert events == ["answered", "saved"]
    [row] = usage_rows()
    assert row.outcome == "success" and row.cost_usd == Decimal(json.loads(body)["cost_usd"])


def test_a_usage_row_that_cannot_be_saved_after_the_answer_is_logged(
    task_config, ordinary_user_token, monkeypatch, caplog
):
    task_config("openai")
    from usage import services

    async def attempts_save_async(attempts):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "attempts_save_async", attempts_save_async)

    status, _, body = asgi_call(COVER_LETTER, headers={"Authorization": f"Bearer {ordinary_user_token}"})

    assert status == 200, body
    assert usage_rows() == []
    [logged] = [record for record in caplog.records if "after the response failed" in record.getMessage()]
    assert logged.levelname == "ERROR" and "database went away" in logged.exc_text


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token"])
def test_an_unauthenticated_call_gets_a_401(task_config, authorization):
    task_config("openai")

    status, headers, body = asgi_call(COVER_LETTER, headers={"Authorization": authorization} if authorization else {})

    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert usage_rows() == []


def test_a_host_not_in_allowed_hosts_gets_a_400(task_config, ordinary_user_token):
    task_config("openai")

    status, _, _ = asgi_call(
        COVER_LETTER, headers={"Authorization": f"Bearer {ordinary_user_token}"}, host="evil.example"
    )

    assert status == 400
    assert usage_rows() == []


def test_plain_http_is_redirected_to_https_when_the_redirect_is_on(task_config, ordinary_user_token, settings):
    task_config("openai")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    handler = lean_handler()  # SecurityMiddleware reads its settings when the stack is built

    status, headers, _ = asgi_call(
        COVER_LETTER, headers={"Authorization": f"Bearer {ordinary_user_token}"}, application=handler
    )

    assert status == 301
    assert headers["location"] == f"https://testserver{COVER_LETTER}"
    assert usage_rows() == []

    status, headers, _ = asgi_call(
        COVER_LETTER, headers={"Authorization": f"Bearer {ordinary_user_token}"}, scheme="https", application=handler
    )
    assert status == 200
    assert headers["strict-transport-security"].startswith("max-age=")


def test_a_session_call_is_served_with_the_csrf_token_and_refused_without(task_config, ordinary_user):
    task_config("openai")
    client = Client()
    client.force_login(ordinary_user)
    session_cookie = (
        f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    )

    status, _, body = asgi_call(COVER_LETTER, headers={"Cookie": session_cookie})
    assert status == 403
    assert json.loads(body)["error"]["type"] == "csrf_failed"
    assert usage_rows() == []

    secret = get_random_string(32)
    status, _, body = asgi_call(
        COVER_LETTER,
        headers={"Cookie": f"{session_cookie}; {django_settings.CSRF_COOKIE_NAME}={secret}", "X-CSRFToken": secret},
    )
    assert status == 200, body
    assert usage_rows()[0].user_id == ordinary_user.pk


def test_a_stale_session_cookie_is_anonymous(task_config):
    task_config("openai")

    status, _, _ = asgi_call(COVER_LETTER, headers={"Cookie": f"{django_settings.SESSION_COOKIE_NAME}=nonsense"})

    assert status == 401


def test_other_paths_go_to_the_full_stack(monkeypatch):
    import aditus.asgi

    seen = []

    async def full_stack(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    monkeypatch.setattr(aditus.asgi, "django_application", full_stack)

    status, _, _ = asgi_call("/api/v1/auth/token")

    assert (status, seen) == (204, ["/api/v1/auth/token"])


def test_each_answer_of_the_task_endpoints_is_counted_by_endpoint_and_status(task_config, ordinary_user_token):
    from prometheus_client import REGISTRY

    task_config("openai")

    def counted(endpoint: str, status: str) -> float:
        labels = {"endpoint": endpoint, "status": status}
        return REGISTRY.get_sample_value("ai_task_responses_total", labels) or 0.0

    before = {key: counted(*key) for key in (("cover-letter-generate", "200"), ("cover-letter-generate", "401"))}
    before["other"] = counted("other", "404")

    assert asgi_call(COVER_LETTER, headers={"Authorization": f"Bearer {ordinary_user_token}"})[0] == 200
    assert asgi_call(COVER_LETTER)[0] == 401
    assert asgi_call(COVER_LETTER)[0] == 401
    assert asgi_call("/api/v1/cover-letter/no-such-thing")[0] == 404

    assert counted("cover-letter-generate", "200") - before[("cover-letter-generate", "200")] == 1
    assert counted("cover-letter-generate", "401") - before[("cover-letter-generate", "401")] == 2
    assert counted("other", "404") - before["other"] == 1


def test_the_disconnect_uvicorn_reports_after_each_response_raises_nothing():
    # Raised for every request, the exception's traceback kept the request and response in a reference cycle
    # that only the garbage collector's full collections freed.
    async def disconnect():
        return {"type": "http.disconnect"}

    async def more_body():
        return {"type": "http.request", "body": b"x"}

    handler = lean_handler()
    assert asyncio.run(handler.listen_for_disconnect(disconnect)) is None
    with pytest.raises(AssertionError, match="http.request"):
        asyncio.run(handler.listen_for_disconnect(more_body))
