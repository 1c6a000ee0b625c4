"""The seed's flow in a real browser: fill in a provider, test the credentials, see the result, then save."""

import pytest
from django.contrib.admin.models import LogEntry

from providers.models import ProviderConfig
from tests.auth_fixtures import PASSWORD, totp_code
from tests.browser.conftest import save_screenshot

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "AIzaSyBrowser-test-secret-key-7777-b7b7"


def log_in(page, live_server, user, device):
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.fill("#id_otp_token", totp_code(device))
    page.click("input[type=submit]:not([name=otp_challenge])")
    page.wait_for_selector("#user-tools")


def test_a_superadmin_tests_credentials_in_the_form_before_saving(
    page, live_server, superadmin, superadmin_device, fake_providers
):
    log_in(page, live_server, superadmin, superadmin_device)
    page.goto(f"{live_server.url}/admin/providers/providerconfig/add/")
    page.select_option("#id_provider_type", "gemini")
    page.fill("#id_display_name", "Gemini Fast")
    page.fill("#id_model_name", "gemini-2.5-flash")
    page.fill("#id_new_api_key", "AIza-invalid-typo-0000")
    page.fill("#id_base_url", fake_providers.gemini_base_url)
    page.check("#id_default_for_extraction")

    page.click("#test-credentials")
    page.wait_for_selector("#test-credentials-result.test-failed")
    assert "authentication" in page.inner_text("#test-credentials-result")

    page.fill("#id_new_api_key", KEY)
    page.click("#test-credentials")
    page.wait_for_selector("#test-credentials-result.test-ok")
    assert "gemini-2.5-flash" in page.inner_text("#test-credentials-result")
    save_screenshot(page, "admin-provider-form-tested")
    assert not ProviderConfig.objects.exists()

    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    config = ProviderConfig.objects.get(display_name="Gemini Fast")
    assert config.reveal_api_key() == KEY and config.default_for_extraction
    assert KEY not in page.content()
    assert "AIza…b7b7" in page.content()
    assert LogEntry.objects.filter(object_id=str(config.pk)).exists()
