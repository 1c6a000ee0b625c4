"""The change form's "Test credentials" button on a saved config: audited against that config.

A test of the saved settings is recorded on the config (its last-test columns); a test of settings changed in the
form but not saved goes into the config's history naming the changes, and leaves the last-test columns alone.
"""

import pytest
from django.contrib.admin.models import LogEntry

from providers.models import ProviderConfig

pytestmark = pytest.mark.django_db

KEY = "AIzaSyA-saved-form-secret-key-h5j6"


@pytest.fixture
def config(fake_providers, superadmin) -> ProviderConfig:
    config = ProviderConfig(
        provider_type="gemini",
        display_name="Saved Gemini",
        model_name="gemini-2.5-flash",
        base_url=fake_providers.gemini_base_url,
        default_for_extraction=True,
    )
    config.set_api_key(KEY)
    config.save()
    return config


def form_of(config: ProviderConfig, **overrides) -> dict:
    data = {
        "provider_type": config.provider_type,
        "display_name": config.display_name,
        "model_name": config.model_name,
        "new_api_key": "",
        "base_url": config.base_url,
        "is_active": "on",
        "default_for_extraction": "on",
        "priority": str(config.priority),
        "weight": str(config.weight),
        "request_timeout_seconds": str(config.request_timeout_seconds),
    }
    data.update(overrides)
    return data


def credential_test_url(config: ProviderConfig) -> str:
    return f"/admin/providers/providerconfig/{config.pk}/test-credentials/"


def test_testing_the_saved_settings_is_logged_against_the_config_and_recorded(
    superadmin_session_client, config, superadmin
):
    response = superadmin_session_client.post(credential_test_url(config), form_of(config))

    assert response.status_code == 200 and response.json()["ok"] is True
    config.refresh_from_db()
    assert config.last_test_ok is True and config.last_tested_at is not None and config.last_test_error == ""
    entry = LogEntry.objects.get()
    assert entry.object_id == str(config.pk) and entry.object_repr == "Saved Gemini"
    assert entry.user == superadmin and entry.change_message == "Tested credentials: ok."
    history = superadmin_session_client.get(f"/admin/providers/providerconfig/{config.pk}/history/")
    assert "Tested credentials: ok." in history.content.decode()
    listing = superadmin_session_client.get("/admin/providers/providerconfig/").content.decode()
    assert "never" not in listing


def test_a_failing_saved_config_is_recorded_as_failed(superadmin_session_client, config):
    ProviderConfig.objects.filter(pk=config.pk).update(model_name="gemini-0-unknown")
    config.refresh_from_db()

    response = superadmin_session_client.post(credential_test_url(config), form_of(config))

    assert response.json()["ok"] is False and response.json()["error_type"] == "model_not_found"
    config.refresh_from_db()
    assert config.last_test_ok is False and config.last_test_error.startswith("model_not_found: ")


def test_testing_unsaved_changes_is_logged_against_the_config_naming_them_without_recording(
    superadmin_session_client, config
):
    response = superadmin_session_client.post(
        credential_test_url(config),
        form_of(config, model_name="gemini-2.5-pro", new_api_key="AIzaSyA-typed-not-saved-k7k8"),
    )

    assert response.status_code == 200 and response.json()["ok"] is True
    assert "gemini-2.5-pro" in response.json()["message"]
    config.refresh_from_db()
    assert config.last_test_ok is None and config.last_tested_at is None
    assert config.model_name == "gemini-2.5-flash" and config.reveal_api_key() == KEY
    entry = LogEntry.objects.get()
    assert entry.object_id == str(config.pk)
    assert entry.change_message == "Tested credentials with unsaved changes (Model name, API key): ok."
    assert "k7k8" not in entry.change_message
