"""Only verified super-admins reach the provider, usage, budget and token pages of the admin.

A staff account holding every model permission of those apps, verified by its own TOTP device, is still refused:
the seed lets only super-admins manage providers, as the REST API already does.
"""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from providers.models import ProviderConfig
from tests.auth_fixtures import PASSWORD

pytestmark = pytest.mark.django_db

KEY = "AIzaSyA-access-test-secret-key-z9y8"

PAGES = [
    "/admin/providers/",
    "/admin/providers/providerconfig/",
    "/admin/providers/providerconfig/add/",
    "/admin/providers/providerconfig/{config}/change/",
    "/admin/providers/providerconfig/{config}/history/",
    "/admin/providers/providerconfig/{config}/delete/",
    "/admin/providers/auditentry/",
    "/admin/usage/",
    "/admin/usage/usagerecord/",
    "/admin/usage/usagerecord/dashboard/",
    "/admin/usage/budgetalert/",
    "/admin/usage/budgetpolicy/",
    "/admin/usage/budgetpolicy/add/",
    "/admin/aditus/apitoken/",
]
APP_NAMES = ["Providers", "Usage", "Audit log", "Provider configurations", "Usage records", "Budget", "Api tokens"]


@pytest.fixture
def config(superadmin) -> ProviderConfig:
    config = ProviderConfig(provider_type="gemini", display_name="Guarded", model_name="gemini-2.5-flash")
    config.set_api_key(KEY)
    config.save()
    return config


@pytest.fixture
def staff_with_permissions(django_user_model):
    """A staff account (not a superuser) with every permission of the providers, usage and aditus apps."""
    user = django_user_model.objects.create_user("stan", "stan@example.com", PASSWORD, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=["providers", "usage", "aditus"]))
    return user


def verified_session(user) -> Client:
    device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def pages(config: ProviderConfig) -> list[str]:
    return [page.format(config=config.pk) for page in PAGES]


def test_an_anonymous_visitor_is_sent_to_the_login_page(client, config):
    for url in pages(config):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url


def test_a_superuser_without_a_verified_device_is_sent_to_the_login_page(superuser_without_otp, config):
    client = Client()
    client.force_login(superuser_without_otp)
    for url in pages(config):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url


def test_a_verified_staff_account_with_every_model_permission_is_refused(staff_with_permissions, config):
    client = verified_session(staff_with_permissions)
    for url in pages(config):
        assert client.get(url).status_code in (403, 404), url

    index = client.get("/admin/").content.decode()
    for name in APP_NAMES:
        assert name not in index
    assert "Usage statistics" not in index


def test_a_verified_staff_account_cannot_post_changes_or_run_credential_tests(staff_with_permissions, config):
    client = verified_session(staff_with_permissions)

    test = client.post(f"/admin/providers/providerconfig/{config.pk}/test-credentials/", {"provider_type": "openai"})
    change = client.post(
        "/admin/providers/providerconfig/",
        {"action": "deactivate", "_selected_action": [config.pk]},
    )
    delete = client.post(f"/admin/providers/providerconfig/{config.pk}/delete/", {"post": "yes"})

    assert test.status_code == 403 and KEY not in test.content.decode()
    assert change.status_code == 403 and delete.status_code == 403
    config.refresh_from_db()
    assert config.is_active


def test_a_verified_superadmin_sees_every_page(superadmin_session_client, config):
    for url in pages(config):
        response = superadmin_session_client.get(url)
        assert response.status_code == 200, url
    index = superadmin_session_client.get("/admin/").content.decode()
    assert "Provider configurations" in index and "Usage statistics" in index
