"""POST /api/v1/auth/token and /api/v1/auth/logout."""

import logging
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from aditus.models import ApiToken
from tests.auth_fixtures import PASSWORD, bearer, totp_code, wrong_totp_code

TOKEN_URL = "/api/v1/auth/token"
LOGOUT_URL = "/api/v1/auth/logout"
WHOAMI_URL = "/test/whoami"


class WhoAmIView(APIView):
    """Any authenticated caller; shows what authentication made of the request."""

    def get(self, request):
        return Response({"username": request.user.username, "verified": request.user.is_verified()})


urlpatterns = [
    path("api/v1/auth/", include("aditus.auth_urls")),
    path(WHOAMI_URL.lstrip("/"), WhoAmIView.as_view()),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


@pytest.fixture(autouse=True)
def _fresh_throttle_counts():
    # The throttle counts in the cache, and every test here calls the throttled endpoint from one address.
    cache.clear()
    yield
    cache.clear()


def request_token(client, username, password=PASSWORD, otp_token=None, **extra):
    body = {"username": username, "password": password}
    if otp_token is not None:
        body["otp_token"] = otp_token
    return client.post(TOKEN_URL, body, format="json", **extra)


def test_it_issues_a_token_to_an_ordinary_user_with_a_password_alone(api_client, ordinary_user):
    response = request_token(api_client, "olivia")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert set(body) == {"token", "expires_at", "mfa_verified"}
    assert body["mfa_verified"] is False
    token = ApiToken.objects.get()
    assert token.user == ordinary_user
    assert token.otp_device is None
    whoami = api_client.get(WHOAMI_URL, **bearer(body["token"]))
    assert whoami.status_code == 200
    assert whoami.json() == {"username": "olivia", "verified": False}


def test_it_stores_only_a_hash_and_a_short_prefix_of_the_token(api_client, ordinary_user):
    secret = request_token(api_client, "olivia").json()["token"]

    token = ApiToken.objects.get()
    assert token.token_hash == ApiToken.hash_secret(secret)
    assert token.prefix == secret[: ApiToken.PREFIX_LENGTH]
    assert len(secret) >= 40
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ApiToken._meta.db_table}")  # noqa: S608 - fixed table name
        rows = cursor.fetchall()
    assert len(rows) == 1
    assert not any(secret in str(value) for value in rows[0])


def test_it_issues_a_verified_token_to_a_superadmin_with_a_valid_code(api_client, superadmin, superadmin_device):
    response = request_token(api_client, "ada", otp_token=totp_code(superadmin_device))

    assert response.status_code == 201, response.json()
    assert response.json()["mfa_verified"] is True
    token = ApiToken.objects.get()
    assert token.user == superadmin
    assert token.otp_device == superadmin_device
    whoami = api_client.get(WHOAMI_URL, **bearer(response.json()["token"]))
    assert whoami.json() == {"username": "ada", "verified": True}


def test_it_refuses_a_superuser_without_an_otp_code(api_client, superadmin):
    response = request_token(api_client, "ada")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_credentials"
    assert "otp_token" in response.json()["detail"]
    assert not ApiToken.objects.exists()


def test_it_refuses_a_superuser_with_a_wrong_otp_code(api_client, superadmin_device):
    response = request_token(api_client, "ada", otp_token=wrong_totp_code(superadmin_device))

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_credentials"
    assert not ApiToken.objects.exists()
    # The failed attempt is recorded, so django-otp's back-off slows down guessing.
    superadmin_device.refresh_from_db()
    assert superadmin_device.throttling_failure_count == 1


def test_it_refuses_a_code_that_was_already_used(api_client, superadmin_device):
    code = totp_code(superadmin_device)
    assert request_token(api_client, "ada", otp_token=code).status_code == 201

    replay = request_token(api_client, "ada", otp_token=code)

    assert replay.status_code == 400
    assert ApiToken.objects.count() == 1


def test_a_wrong_password_a_wrong_code_and_an_unknown_user_get_the_same_answer(
    api_client, superadmin_device, ordinary_user
):
    answers = [
        request_token(api_client, "nobody-by-this-name"),
        request_token(api_client, "olivia", password="not-the-password"),
        request_token(api_client, "ada", password="not-the-password", otp_token=totp_code(superadmin_device)),
        request_token(api_client, "ada", otp_token=wrong_totp_code(superadmin_device)),
    ]

    assert {response.status_code for response in answers} == {400}
    assert len({response.content for response in answers}) == 1
    assert not ApiToken.objects.exists()


def test_it_tells_a_superuser_without_a_device_to_enrol_mfa(api_client, superuser_without_otp):
    response = request_token(api_client, "sam", otp_token="123456")

    assert response.status_code == 400
    assert response.json()["code"] == "mfa_enrolment_required"
    assert "Enrol" in response.json()["detail"]
    assert not ApiToken.objects.exists()


def test_it_does_not_reveal_a_missing_device_without_the_right_password(api_client, superuser_without_otp):
    response = request_token(api_client, "sam", password="not-the-password")

    assert response.json()["code"] == "invalid_credentials"


def test_an_unconfirmed_device_does_not_count_as_enrolled(api_client, superuser_without_otp):
    device = TOTPDevice.objects.create(user=superuser_without_otp, name="Pending", confirmed=False)

    response = request_token(api_client, "sam", otp_token=totp_code(device))

    assert response.json()["code"] == "mfa_enrolment_required"
    assert not ApiToken.objects.exists()


def test_it_gives_an_inactive_user_nothing(api_client, ordinary_user):
    ordinary_user.is_active = False
    ordinary_user.save(update_fields=["is_active"])

    response = request_token(api_client, "olivia")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_credentials"
    assert not ApiToken.objects.exists()


def test_an_ordinary_user_with_a_device_can_get_a_verified_token(api_client, ordinary_user):
    device = TOTPDevice.objects.create(user=ordinary_user, name="Phone", confirmed=True)

    response = request_token(api_client, "olivia", otp_token=totp_code(device))

    assert response.status_code == 201
    assert response.json()["mfa_verified"] is True


def test_it_names_missing_and_malformed_fields(api_client, superadmin):
    response = api_client.post(TOKEN_URL, {"username": "ada", "otp_token": "12ab56"}, format="json")

    assert response.status_code == 400
    assert set(response.json()) == {"password", "otp_token"}
    assert "authenticator" in response.json()["otp_token"][0]


def test_a_stale_bearer_header_does_not_stop_a_new_login(api_client, ordinary_user):
    response = request_token(api_client, "olivia", **bearer("expired-or-made-up"))

    assert response.status_code == 201


def test_the_token_expires_after_the_configured_lifetime(api_client, ordinary_user, settings):
    settings.API_TOKEN_TTL = timedelta(minutes=5)

    before = timezone.now()
    secret = request_token(api_client, "olivia").json()["token"]

    token = ApiToken.objects.get()
    assert before + timedelta(minutes=5) <= token.expires_at <= timezone.now() + timedelta(minutes=5)
    assert api_client.get(WHOAMI_URL, **bearer(secret)).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = api_client.get(WHOAMI_URL, **bearer(secret))
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]


def test_logout_revokes_the_presented_token(api_client, ordinary_user, ordinary_user_token):
    other_secret = request_token(api_client, "olivia").json()["token"]

    response = api_client.post(LOGOUT_URL, **bearer(ordinary_user_token))

    assert response.status_code == 204
    revoked = ApiToken.objects.get(token_hash=ApiToken.hash_secret(ordinary_user_token))
    assert revoked.revoked_at is not None
    assert ApiToken.objects.get(token_hash=ApiToken.hash_secret(other_secret)).revoked_at is None
    after = api_client.get(WHOAMI_URL, **bearer(ordinary_user_token))
    assert after.status_code == 401
    assert "revoked" in after.json()["detail"]
    assert api_client.post(LOGOUT_URL, **bearer(ordinary_user_token)).status_code == 401


def test_logout_without_a_token_is_refused_with_a_bearer_challenge(api_client, ordinary_user):
    response = api_client.post(LOGOUT_URL)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_an_unknown_token_is_refused_with_a_bearer_challenge(api_client, ordinary_user_token):
    response = api_client.get(WHOAMI_URL, **bearer(ordinary_user_token[:-1] + "x"))

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"] == "Invalid bearer token."


def test_a_token_of_a_user_disabled_later_stops_working(api_client, ordinary_user, ordinary_user_token):
    ordinary_user.is_active = False
    ordinary_user.save(update_fields=["is_active"])

    response = api_client.get(WHOAMI_URL, **bearer(ordinary_user_token))

    assert response.status_code == 401
    assert "disabled" in response.json()["detail"]


def test_changing_the_password_revokes_the_users_tokens(
    api_client, ordinary_user, ordinary_user_token, superadmin_token
):
    ordinary_user.set_password("A-New-Password-For-Olivia-91")
    ordinary_user.save()

    response = api_client.get(WHOAMI_URL, **bearer(ordinary_user_token))

    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert ApiToken.objects.filter(user=ordinary_user, revoked_at__isnull=True).count() == 0
    # Someone else's token is not touched, and the new password earns a new token that works.
    assert api_client.get(WHOAMI_URL, **bearer(superadmin_token)).status_code == 200
    new = request_token(api_client, "olivia", password="A-New-Password-For-Olivia-91")
    assert new.status_code == 201
    assert api_client.get(WHOAMI_URL, **bearer(new.json()["token"])).status_code == 200


def test_saving_a_user_without_a_new_password_keeps_the_tokens(api_client, ordinary_user, ordinary_user_token):
    ordinary_user.first_name = "Olivia"
    ordinary_user.save()
    request_token(api_client, "olivia")  # a login updates last_login

    assert api_client.get(WHOAMI_URL, **bearer(ordinary_user_token)).status_code == 200


def test_it_throttles_token_requests(api_client, ordinary_user, monkeypatch):
    # DRF copies the rates into the throttle class at import, so override_settings cannot reach them.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {**ScopedRateThrottle.THROTTLE_RATES, "auth": "3/min"})
    for _ in range(3):
        assert request_token(api_client, "olivia", password="not-the-password").status_code == 400

    response = request_token(api_client, "olivia")

    assert response.status_code == 429
    assert "throttled" in response.json()["detail"]
    assert not ApiToken.objects.exists()
    cache.clear()
    assert request_token(api_client, "olivia").status_code == 201


def test_it_records_a_use_at_most_once_a_minute(api_client, ordinary_user_token):
    assert api_client.get(WHOAMI_URL, **bearer(ordinary_user_token)).status_code == 200
    token = ApiToken.objects.get()
    first_use = token.last_used_at
    assert first_use is not None

    with CaptureQueriesContext(connection) as queries:
        assert api_client.get(WHOAMI_URL, **bearer(ordinary_user_token)).status_code == 200
    assert not [query for query in queries if query["sql"].startswith("UPDATE")]
    token.refresh_from_db()
    assert token.last_used_at == first_use

    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first_use - timedelta(minutes=2))
    assert api_client.get(WHOAMI_URL, **bearer(ordinary_user_token)).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at > first_use


def test_neither_the_token_nor_the_password_reaches_the_logs(api_client, superadmin_device, caplog):
    caplog.set_level(logging.DEBUG)

    request_token(api_client, "ada", password="not-the-password", otp_token=wrong_totp_code(superadmin_device))
    secret = request_token(api_client, "ada", otp_token=totp_code(superadmin_device)).json()["token"]
    api_client.get(WHOAMI_URL, **bearer(secret))
    api_client.post(LOGOUT_URL, **bearer(secret))

    assert "Issued API token" in caplog.text
    assert secret not in caplog.text
    assert PASSWORD not in caplog.text
