"""The API token admin, through the project's own URLs and OTP admin site."""

import pytest
from django.urls import reverse

from aditus.models import ApiToken

pytestmark = pytest.mark.django_db

CHANGELIST_URL = "/admin/aditus/apitoken/"


def test_the_project_routes_the_auth_endpoints_under_api_v1_auth():
    assert reverse("auth_api:token") == "/api/v1/auth/token"
    assert reverse("auth_api:logout") == "/api/v1/auth/logout"


def test_the_admin_lists_tokens_without_their_hash(superadmin_session_client, superadmin_token):
    token = ApiToken.objects.get()

    listing = superadmin_session_client.get(CHANGELIST_URL)
    detail = superadmin_session_client.get(f"{CHANGELIST_URL}{token.pk}/change/")

    assert listing.status_code == 200
    assert detail.status_code == 200
    for page in (listing.content.decode(), detail.content.decode()):
        assert token.prefix in page
        assert token.token_hash not in page
        assert superadmin_token not in page


def test_the_admin_is_closed_to_a_superuser_without_a_verified_device(client, superuser_without_otp):
    client.force_login(superuser_without_otp)

    response = client.get(CHANGELIST_URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_revoke_action_revokes_the_selected_tokens(
    superadmin_session_client, superadmin_token, ordinary_user_token
):
    selected = ApiToken.objects.get(user__username="olivia")

    response = superadmin_session_client.post(
        CHANGELIST_URL, {"action": "revoke", "_selected_action": [selected.pk]}, follow=True
    )

    assert response.status_code == 200
    assert "Revoked 1 token(s)." in response.content.decode()
    selected.refresh_from_db()
    assert selected.revoked_at is not None
    assert ApiToken.objects.get(user__username="ada").revoked_at is None


def test_tokens_cannot_be_added_or_deleted_in_the_admin(superadmin_session_client, superadmin_token):
    token = ApiToken.objects.get()

    assert superadmin_session_client.get(f"{CHANGELIST_URL}add/").status_code == 403
    assert superadmin_session_client.get(f"{CHANGELIST_URL}{token.pk}/delete/").status_code == 403
