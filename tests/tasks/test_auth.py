"""Who may call the task endpoints: any active user, by bearer token or by session (with CSRF); nobody else."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.test import AsyncClient
from django.utils import timezone
from django.utils.crypto import get_random_string
from PIL import Image

from tests.auth_fixtures import bearer
from tests.tasks.conftest import COVER_LETTER, CV_DRAFT, EXTRACT, VALIDATE_IMAGE, call, db_with_threads, usage_rows

pytestmark = db_with_threads


def png() -> io.BytesIO:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    buffer.seek(0)
    buffer.name = "posting.png"
    return buffer


ENDPOINTS = {
    "extract": (EXTRACT, lambda: {"text": "Python developer at Acme."}, False),
    "validate-image": (VALIDATE_IMAGE, lambda: {"image": png()}, True),
    "cv-draft": (CV_DRAFT, lambda: {"profile": "Ada", "job": "Developer"}, False),
    "cover-letter": (COVER_LETTER, lambda: {"profile": "Ada", "job": "Developer"}, False),
}


@pytest.fixture(params=list(ENDPOINTS))
def endpoint(request, task_config):
    task_config("openai")
    path, data, multipart = ENDPOINTS[request.param]
    return lambda **kwargs: call(path, data(), multipart=multipart, **kwargs)


def test_an_anonymous_caller_gets_a_401_with_a_bearer_challenge(endpoint):
    response = endpoint()

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "not_authenticated"
    assert response["X-Request-ID"]
    assert usage_rows() == []


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-token", "Bearer", "Bearer two words", "bearer " + "x" * 200],
)
def test_a_bad_bearer_token_gets_a_401(endpoint, header):
    response = endpoint(headers={"Authorization": header})

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert response.json()["error"]["type"] == "invalid_token"


def test_a_revoked_or_expired_token_gets_a_401_saying_so(endpoint, ordinary_user_token):
    from aditus.models import ApiToken

    token = ApiToken.objects.for_secret(ordinary_user_token).get()
    token.expires_at = timezone.now() - timedelta(seconds=1)
    token.save(update_fields=["expires_at"])
    assert "expired" in endpoint(headers={"Authorization": f"Bearer {ordinary_user_token}"}).json()["error"]["message"]
    token.revoke()
    assert "revoked" in endpoint(headers={"Authorization": f"Bearer {ordinary_user_token}"}).json()["error"]["message"]


def test_a_disabled_accounts_token_gets_a_401(endpoint, ordinary_user, ordinary_user_token):
    ordinary_user.is_active = False
    ordinary_user.save(update_fields=["is_active"])

    assert endpoint(headers={"Authorization": f"Bearer {ordinary_user_token}"}).status_code == 401


@pytest.mark.parametrize("token", ["ordinary_user_token", "superuser_without_otp_token", "superadmin_token"])
def test_any_active_user_with_a_token_may_call(endpoint, token, request):
    secret = request.getfixturevalue(token)

    response = endpoint(headers={"Authorization": bearer(secret)["HTTP_AUTHORIZATION"]})

    assert response.status_code == 200, response.content
    assert len(usage_rows()) == 1


def test_a_signed_in_user_may_call_with_a_session(endpoint, ordinary_user):
    client = AsyncClient()
    client.force_login(ordinary_user)

    response = endpoint(client=client)

    assert response.status_code == 200, response.content
    assert usage_rows()[0].user_id == ordinary_user.pk


def test_a_session_call_needs_the_csrf_token(task_config, ordinary_user):
    task_config("openai")
    client = AsyncClient(enforce_csrf_checks=True)
    client.force_login(ordinary_user)
    data = {"profile": "Ada", "job": "Developer"}

    refused = call(CV_DRAFT, data, client=client)

    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "csrf_failed"
    assert usage_rows() == []

    secret = get_random_string(32)
    client.cookies[django_settings.CSRF_COOKIE_NAME] = secret
    accepted = call(CV_DRAFT, data, client=client, headers={"X-CSRFToken": secret})
    assert accepted.status_code == 200, accepted.content


def test_a_bearer_token_call_needs_no_csrf_token(task_config, ordinary_user_token):
    task_config("openai")
    client = AsyncClient(enforce_csrf_checks=True)

    response = call(
        CV_DRAFT, {"profile": "Ada", "job": "Developer"}, client=client, headers=bearer_header(ordinary_user_token)
    )

    assert response.status_code == 200


def bearer_header(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
