"""IsVerifiedSuperAdmin on a test-only view, by session and by bearer token."""

import pytest
from django.http import JsonResponse
from django.test import Client
from django.urls import path
from django_otp.admin import OTPAdminSite
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.response import Response
from rest_framework.views import APIView

from aditus.models import ApiToken
from aditus.permissions import MFA_REQUIRED, NOT_SUPERADMIN, IsVerifiedSuperAdmin, is_verified_superadmin
from aditus.services import api_token_issue
from tests.auth_fixtures import PASSWORD, bearer, totp_code, wrong_totp_code

PROTECTED_URL = "/test/superadmin-only"
PLAIN_DJANGO_URL = "/test/plain-django"


class SuperAdminOnlyView(APIView):
    permission_classes = (IsVerifiedSuperAdmin,)

    def get(self, request):
        return Response({"ok": True})


def plain_django_view(request):
    return JsonResponse({"verified_superadmin": is_verified_superadmin(request)})


otp_admin_site = OTPAdminSite(name="otpadmin")

urlpatterns = [
    path(PROTECTED_URL.lstrip("/"), SuperAdminOnlyView.as_view()),
    path(PLAIN_DJANGO_URL.lstrip("/"), plain_django_view),
    path("otpadmin/", otp_admin_site.urls),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


def session_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def token_client(secret: str) -> Client:
    return Client(**bearer(secret))


def assert_refused(response, status: int, detail: str) -> None:
    assert response.status_code == status
    assert response.json()["detail"] == detail


def test_an_anonymous_caller_gets_401_with_a_bearer_challenge(db):
    response = Client().get(PROTECTED_URL)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_an_ordinary_user_is_refused_by_session(ordinary_user):
    assert_refused(session_client(ordinary_user).get(PROTECTED_URL), 403, NOT_SUPERADMIN)


def test_an_ordinary_user_is_refused_by_token(ordinary_user_token):
    assert_refused(token_client(ordinary_user_token).get(PROTECTED_URL), 403, NOT_SUPERADMIN)


def test_a_superuser_without_otp_is_told_mfa_is_required_by_session(superuser_without_otp):
    response = session_client(superuser_without_otp).get(PROTECTED_URL)

    assert_refused(response, 403, MFA_REQUIRED)
    assert "MFA verification is required" in MFA_REQUIRED


def test_a_superuser_without_otp_is_told_mfa_is_required_by_token(superuser_without_otp_token):
    assert_refused(token_client(superuser_without_otp_token).get(PROTECTED_URL), 403, MFA_REQUIRED)


def test_a_superadmin_session_without_a_verified_device_is_refused(superadmin):
    assert_refused(session_client(superadmin).get(PROTECTED_URL), 403, MFA_REQUIRED)


def test_a_superadmin_token_issued_without_a_device_is_refused(superadmin):
    _, secret = api_token_issue(user=superadmin, otp_device=None)

    assert_refused(token_client(secret).get(PROTECTED_URL), 403, MFA_REQUIRED)


def test_a_verified_superadmin_session_is_admitted(superadmin_session_client):
    response = superadmin_session_client.get(PROTECTED_URL)

    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_a_verified_superadmin_token_is_admitted(superadmin_token):
    assert token_client(superadmin_token).get(PROTECTED_URL).status_code == 200


def test_a_session_verified_through_the_otp_admin_login_form_is_admitted(superadmin, superadmin_device):
    client = Client()
    response = client.post(
        "/otpadmin/login/",
        {
            "username": "ada",
            "password": PASSWORD,
            "otp_device": superadmin_device.persistent_id,
            "otp_token": totp_code(superadmin_device),
            "next": "/otpadmin/",
        },
    )

    assert response.status_code == 302
    assert client.get(PROTECTED_URL).status_code == 200


def test_a_login_with_a_wrong_code_in_the_admin_form_leaves_the_caller_out(superadmin, superadmin_device):
    client = Client()
    wrong = wrong_totp_code(superadmin_device)
    response = client.post(
        "/otpadmin/login/",
        {
            "username": "ada",
            "password": PASSWORD,
            "otp_device": superadmin_device.persistent_id,
            "otp_token": wrong,
        },
    )

    assert response.status_code == 200  # the form again, with an error
    assert client.get(PROTECTED_URL).status_code == 401


def test_deleting_the_device_unverifies_its_tokens(superadmin_token, superadmin_device):
    superadmin_device.delete()

    assert_refused(token_client(superadmin_token).get(PROTECTED_URL), 403, MFA_REQUIRED)
    assert ApiToken.objects.get().otp_device is None


def test_an_unconfirmed_device_does_not_verify_a_token_or_a_session(
    superadmin_token, superadmin_session_client, superadmin_device
):
    superadmin_device.confirmed = False
    superadmin_device.save(update_fields=["confirmed"])

    assert token_client(superadmin_token).get(PROTECTED_URL).status_code == 403
    assert superadmin_session_client.get(PROTECTED_URL).status_code == 403


def test_a_token_pointing_at_another_users_device_is_not_verified(superadmin, superuser_without_otp):
    _, secret = api_token_issue(user=superuser_without_otp, otp_device=None)
    ApiToken.objects.update(otp_device=TOTPDevice.objects.get(user=superadmin))

    assert_refused(token_client(secret).get(PROTECTED_URL), 403, MFA_REQUIRED)


def test_a_superadmin_demoted_later_is_refused(superadmin, superadmin_token):
    superadmin.is_superuser = False
    superadmin.save(update_fields=["is_superuser"])

    assert_refused(token_client(superadmin_token).get(PROTECTED_URL), 403, NOT_SUPERADMIN)


def test_a_superadmin_disabled_later_is_refused(superadmin, superadmin_token, superadmin_session_client):
    superadmin.is_active = False
    superadmin.save(update_fields=["is_active"])

    assert token_client(superadmin_token).get(PROTECTED_URL).status_code == 401
    assert superadmin_session_client.get(PROTECTED_URL).status_code == 401


def test_the_helper_works_on_plain_django_requests(superadmin, superadmin_session_client):
    assert superadmin_session_client.get(PLAIN_DJANGO_URL).json() == {"verified_superadmin": True}
    assert session_client(superadmin).get(PLAIN_DJANGO_URL).json() == {"verified_superadmin": False}
    assert Client().get(PLAIN_DJANGO_URL).json() == {"verified_superadmin": False}


@pytest.mark.django_db
def test_a_token_user_is_verified_by_its_token_and_is_freed_without_the_garbage_collector(
    superadmin, superadmin_device
):
    import gc
    import weakref

    from aditus.authentication import token_user

    _token, mfa_secret = api_token_issue(user=superadmin, otp_device=superadmin_device)
    _token, plain_secret = api_token_issue(user=superadmin, otp_device=None)

    verified, _ = token_user(mfa_secret)
    unverified, _ = token_user(plain_secret)
    assert verified.is_verified() and not unverified.is_verified()

    gc.disable()  # freed by reference counting alone: no cycle through the user
    try:
        gone = weakref.ref(verified)
        del verified, _
        assert gone() is None
    finally:
        gc.enable()
