"""Credential tests of a saved config in a real browser: recorded on it, and success and failure look different."""

import pytest
from cryptography.fernet import Fernet

from providers.models import ProviderConfig
from providers.services import UNDECRYPTABLE_KEY_MESSAGE
from tests.browser.conftest import log_in, save_screenshot

pytestmark = pytest.mark.django_db(transaction=True)

KEY = "AIzaSyBrowser-saved-config-secret-5656"


@pytest.fixture
def saved_config(fake_providers, superadmin) -> ProviderConfig:
    config = ProviderConfig(
        provider_type="gemini",
        display_name="Gemini Saved",
        model_name="gemini-2.5-flash",
        base_url=fake_providers.gemini_base_url,
        default_for_extraction=True,
    )
    config.set_api_key(KEY)
    config.save()
    return config


def background(page, selector: str) -> str:
    return page.eval_on_selector(selector, "element => getComputedStyle(element).backgroundColor")


def test_a_test_from_a_saved_configs_form_shows_in_its_list_and_history(
    page, live_server, superadmin, superadmin_device, saved_config
):
    log_in(page, live_server, superadmin, superadmin_device)
    page.goto(f"{live_server.url}/admin/providers/providerconfig/{saved_config.pk}/change/")
    page.click("#test-credentials")
    page.wait_for_selector("#test-credentials-result.test-ok")
    ok_colour = background(page, "#test-credentials-result")
    save_screenshot(page, "admin-provider-test-ok")

    page.fill("#id_model_name", "gemini-0-unknown")
    page.click("#test-credentials")
    page.wait_for_selector("#test-credentials-result.test-failed")
    failed_colour = background(page, "#test-credentials-result")
    save_screenshot(page, "admin-provider-test-failed")
    assert ok_colour != failed_colour
    assert "rgba(0, 0, 0, 0)" not in (ok_colour, failed_colour)

    saved_config.refresh_from_db()
    assert saved_config.last_test_ok is True  # the failed test was of an unsaved model name

    page.goto(f"{live_server.url}/admin/providers/providerconfig/")
    assert page.inner_text("td.field-last_test") == "✔ ok"
    page.goto(f"{live_server.url}/admin/providers/providerconfig/{saved_config.pk}/history/")
    history = page.inner_text("#content")
    assert "Tested credentials: ok." in history
    assert "Tested credentials with unsaved changes (Model name): failed (model_not_found)." in history
    save_screenshot(page, "admin-provider-history")


def test_a_key_that_cannot_be_decrypted_shows_a_clear_failure_in_the_form(
    page, live_server, superadmin, superadmin_device, saved_config, settings
):
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    log_in(page, live_server, superadmin, superadmin_device)
    page.goto(f"{live_server.url}/admin/providers/providerconfig/{saved_config.pk}/change/")
    page.click("#test-credentials")
    page.wait_for_selector("#test-credentials-result.test-failed")
    assert page.inner_text("#test-credentials-result") == f"Failed (decryption): {UNDECRYPTABLE_KEY_MESSAGE}"
    save_screenshot(page, "admin-provider-test-undecryptable")

    page.goto(f"{live_server.url}/admin/providers/providerconfig/")
    page.check(f"input[name=_selected_action][value='{saved_config.pk}']")
    page.select_option("select[name=action]", "test_credentials")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist .error")
    assert "Gemini Saved: failed (decryption)" in page.inner_text(".messagelist")
    assert page.inner_text("td.field-last_test") == "✖ failed (decryption)"
    save_screenshot(page, "admin-provider-list-undecryptable")
