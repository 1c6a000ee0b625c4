"""A staff account with every provider and usage permission, signed in with its authenticator, sees none of it."""

import pytest
from django.contrib.auth.models import Permission
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.auth_fixtures import PASSWORD
from tests.browser.conftest import log_in, save_screenshot

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_staff_account_with_model_permissions_sees_no_provider_or_usage_page(page, live_server, django_user_model):
    staff = django_user_model.objects.create_user("stan", "stan@example.com", PASSWORD, is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label__in=["providers", "usage"]))
    device = TOTPDevice.objects.create(user=staff, name="Authenticator app", confirmed=True)

    log_in(page, live_server, staff, device)
    index = page.inner_text("#content")
    save_screenshot(page, "admin-access-staff-index")
    assert "Provider configurations" not in index and "Usage statistics" not in index

    response = page.goto(f"{live_server.url}/admin/providers/providerconfig/")
    assert response.status == 403
    response = page.goto(f"{live_server.url}/admin/usage/usagerecord/dashboard/")
    assert response.status == 403


def test_a_verified_superadmin_sees_the_provider_and_usage_pages(page, live_server, superadmin, superadmin_device):
    log_in(page, live_server, superadmin, superadmin_device)
    index = page.inner_text("#content")
    save_screenshot(page, "admin-access-superadmin-index")
    assert "Provider configurations" in index and "Usage statistics" in index
    assert page.goto(f"{live_server.url}/admin/providers/providerconfig/").status == 200
