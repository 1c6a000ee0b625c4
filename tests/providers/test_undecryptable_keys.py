"""A stored key that no FIELD_ENCRYPTION_KEYS key decrypts (a key rotated in the wrong order).

The API's test endpoint, the admin's list action and the change form's button, and test_providers all report it
the same way — a failed test naming FIELD_ENCRYPTION_KEYS and what to do — never a 500.
"""

import pytest
from cryptography.fernet import Fernet
from django.contrib.admin.models import LogEntry

from providers.models import ProviderConfig
from providers.services import UNDECRYPTABLE_KEY_MESSAGE
from tests.providers.test_commands import Run

pytestmark = pytest.mark.django_db

KEY = "AIzaSyA-rotated-away-secret-key-m3n4"
CHANGELIST = "/admin/providers/providerconfig/"


@pytest.fixture
def undecryptable_config(settings, fake_providers, superadmin) -> ProviderConfig:
    """A config whose key was encrypted under a FIELD_ENCRYPTION_KEYS key that has since been removed."""
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    config = ProviderConfig(
        provider_type="gemini",
        display_name="Mid-rotation",
        model_name="gemini-2.5-flash",
        base_url=fake_providers.gemini_base_url,
        default_for_extraction=True,
    )
    config.set_api_key(KEY)
    config.save()
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    return config


def assert_recorded_as_undecryptable(config: ProviderConfig) -> None:
    config.refresh_from_db()
    assert config.last_test_ok is False
    assert config.last_test_error == f"decryption: {UNDECRYPTABLE_KEY_MESSAGE}"
    entry = LogEntry.objects.filter(object_id=str(config.pk)).latest("pk")
    assert entry.change_message == "Tested credentials: failed (decryption)."


def test_the_message_names_the_setting_and_what_to_do():
    assert "FIELD_ENCRYPTION_KEYS" in UNDECRYPTABLE_KEY_MESSAGE
    assert "re-enter the key" in UNDECRYPTABLE_KEY_MESSAGE


def test_the_api_test_endpoint_answers_a_failed_test_not_a_500(superadmin_api_client, undecryptable_config):
    response = superadmin_api_client.post(f"/api/v1/super-admin/providers/configs/{undecryptable_config.pk}/test")

    assert response.status_code == 200
    assert response.json() == {
        "ok": False,
        "error_type": "decryption",
        "message": UNDECRYPTABLE_KEY_MESSAGE,
        "model": None,
    }
    assert_recorded_as_undecryptable(undecryptable_config)


def test_the_admin_list_action_reports_it_as_an_error_message(superadmin_session_client, undecryptable_config):
    response = superadmin_session_client.post(
        CHANGELIST, {"action": "test_credentials", "_selected_action": [undecryptable_config.pk]}, follow=True
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert "Mid-rotation: failed (decryption)" in page
    assert "FIELD_ENCRYPTION_KEYS" in page and KEY not in page
    assert_recorded_as_undecryptable(undecryptable_config)


def test_the_change_forms_button_answers_json_naming_the_problem(superadmin_session_client, undecryptable_config):
    response = superadmin_session_client.post(
        f"{CHANGELIST}{undecryptable_config.pk}/test-credentials/",
        {
            "provider_type": "gemini",
            "display_name": "Mid-rotation",
            "model_name": "gemini-2.5-flash",
            "new_api_key": "",
            "base_url": undecryptable_config.base_url,
            "is_active": "on",
            "default_for_extraction": "on",
            "priority": "100",
            "weight": "1",
            "request_timeout_seconds": "60",
        },
    )

    assert response.status_code == 200
    assert response.json() == {
        "ok": False,
        "error_type": "decryption",
        "message": UNDECRYPTABLE_KEY_MESSAGE,
        "model": None,
    }
    assert_recorded_as_undecryptable(undecryptable_config)


def test_entering_a_new_key_in_the_form_tests_it_without_the_stored_one(
    superadmin_session_client, undecryptable_config
):
    response = superadmin_session_client.post(
        f"{CHANGELIST}{undecryptable_config.pk}/test-credentials/",
        {
            "provider_type": "gemini",
            "model_name": "gemini-2.5-flash",
            "new_api_key": "AIzaSyA-a-fresh-replacement-key-x1x2",
            "base_url": undecryptable_config.base_url,
            "priority": "100",
            "weight": "1",
            "request_timeout_seconds": "60",
        },
    )

    assert response.status_code == 200 and response.json()["ok"] is True


def test_test_providers_prints_the_same_message(undecryptable_config):
    run = Run("test_providers").failed()

    (row,) = [line for line in run.stdout.splitlines() if line.startswith("Mid-rotation")]
    assert "FAILED" in row and "decryption" in row and "cannot be decrypted with the current" in row
