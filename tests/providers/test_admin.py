import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.test import Client

from providers.models import ProviderConfig

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/providers/providerconfig/"
ADD = "/admin/providers/providerconfig/add/"
KEY = "AIzaSyA-admin-form-secret-key-q1w2"


def form_data(fake_providers, **overrides) -> dict:
    data = {
        "provider_type": "gemini",
        "display_name": "Gemini Admin",
        "model_name": "gemini-2.5-flash",
        "new_api_key": KEY,
        "base_url": fake_providers.gemini_base_url,
        "is_active": "on",
        "default_for_cv_drafting": "on",
        "priority": "100",
        "weight": "1",
        "request_timeout_seconds": "30",
        "daily_token_limit": "",
        "monthly_token_limit": "",
        "input_price_per_million": "",
        "output_price_per_million": "",
    }
    data.update(overrides)
    return data


@pytest.fixture
def config(fake_providers, superadmin) -> ProviderConfig:
    config = ProviderConfig(
        provider_type="gemini",
        display_name="Existing",
        model_name="gemini-2.5-flash",
        base_url=fake_providers.gemini_base_url,
        created_by=superadmin,
    )
    config.set_api_key(KEY)
    config.save()
    return config


def test_the_admin_refuses_a_superuser_without_a_verified_otp(superuser_without_otp):
    client = Client()
    client.force_login(superuser_without_otp)
    response = client.get(CHANGELIST)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_list_shows_masked_keys_tasks_and_test_results(superadmin_session_client, config):
    config.default_for_extraction = True
    config.save()
    response = superadmin_session_client.get(CHANGELIST)

    page = response.content.decode()
    assert response.status_code == 200
    assert "Existing" in page and "AIza…q1w2" in page and "Job-posting extraction" in page
    assert KEY not in page


def test_the_list_filters_and_searches(superadmin_session_client, config):
    assert "Existing" in superadmin_session_client.get(CHANGELIST, {"q": "Existing"}).content.decode()
    assert (
        "Existing" not in superadmin_session_client.get(CHANGELIST, {"provider_type__exact": "openai"}).content.decode()
    )


def test_adding_a_config_encrypts_the_key_and_audits_it(superadmin_session_client, fake_providers, superadmin):
    response = superadmin_session_client.post(ADD, form_data(fake_providers))

    assert response.status_code == 302, response.content.decode()[:3000]
    config = ProviderConfig.objects.get(display_name="Gemini Admin")
    assert config.reveal_api_key() == KEY
    assert config.created_by == superadmin and config.default_for_cv_drafting
    entry = LogEntry.objects.get(object_id=str(config.pk))
    assert entry.action_flag == ADDITION and KEY not in entry.change_message


def test_adding_without_a_key_is_refused(superadmin_session_client, fake_providers):
    response = superadmin_session_client.post(ADD, form_data(fake_providers, new_api_key=""))
    assert response.status_code == 200 and "This field is required" in response.content.decode()
    assert not ProviderConfig.objects.exists()


def test_the_change_form_never_renders_the_key(superadmin_session_client, config):
    page = superadmin_session_client.get(f"{CHANGELIST}{config.pk}/change/").content.decode()
    assert KEY not in page
    assert "Leave empty to keep it" in page and "Test credentials" in page


def test_changing_with_an_empty_key_keeps_it_and_a_new_key_is_a_rotation(
    superadmin_session_client, config, fake_providers
):
    url = f"{CHANGELIST}{config.pk}/change/"
    kept = superadmin_session_client.post(
        url, form_data(fake_providers, display_name="Existing", new_api_key="", model_name="gemini-2.5-pro")
    )
    assert kept.status_code == 302
    config.refresh_from_db()
    assert config.model_name == "gemini-2.5-pro" and config.reveal_api_key() == KEY

    new_key = "AIzaSyZ-rotated-in-the-admin-0000-p0p0"
    rotated = superadmin_session_client.post(
        url, form_data(fake_providers, display_name="Existing", new_api_key=new_key)
    )
    assert rotated.status_code == 302
    config.refresh_from_db()
    assert config.reveal_api_key() == new_key
    messages = [entry.get_change_message() for entry in LogEntry.objects.filter(object_id=str(config.pk))]
    assert "Rotated the API key." in messages
    assert not any(new_key in message or KEY in message for message in messages)


def test_the_test_action_reports_each_result(superadmin_session_client, config):
    bad = ProviderConfig(
        provider_type="gemini", display_name="Broken", model_name="gemini-2.5-flash", base_url=config.base_url
    )
    bad.set_api_key("AIza-revoked-0000000000000")
    bad.save()
    response = superadmin_session_client.post(
        CHANGELIST, {"action": "test_credentials", "_selected_action": [config.pk, bad.pk]}, follow=True
    )

    page = response.content.decode()
    assert "Existing: ok" in page and "Broken: failed (authentication)" in page
    config.refresh_from_db()
    bad.refresh_from_db()
    assert config.last_test_ok is True and bad.last_test_ok is False


def test_activate_and_deactivate_actions(superadmin_session_client, config):
    response = superadmin_session_client.post(
        CHANGELIST, {"action": "deactivate", "_selected_action": [config.pk]}, follow=True
    )
    assert "Deactivated 1 configuration(s)." in response.content.decode()
    config.refresh_from_db()
    assert config.is_active is False
    superadmin_session_client.post(CHANGELIST, {"action": "activate", "_selected_action": [config.pk]})
    config.refresh_from_db()
    assert config.is_active is True


def test_the_form_tests_typed_credentials_without_saving(superadmin_session_client, fake_providers):
    response = superadmin_session_client.post(f"{CHANGELIST}test-credentials/", form_data(fake_providers))

    assert response.status_code == 200 and response.json()["ok"] is True
    assert not ProviderConfig.objects.exists()

    failing = superadmin_session_client.post(
        f"{CHANGELIST}test-credentials/", form_data(fake_providers, new_api_key="AIza-invalid-000000000")
    )
    assert failing.json() == {**failing.json(), "ok": False, "error_type": "authentication"}


def test_the_change_form_tests_with_the_stored_key_when_none_is_typed(
    superadmin_session_client, config, fake_providers
):
    response = superadmin_session_client.post(
        f"{CHANGELIST}{config.pk}/test-credentials/",
        form_data(fake_providers, new_api_key="", display_name="Existing"),
    )
    assert response.json()["ok"] is True
    config.refresh_from_db()
    assert config.last_tested_at is None  # nothing saved by a form test


def test_the_form_test_names_invalid_fields(superadmin_session_client, fake_providers):
    response = superadmin_session_client.post(
        f"{CHANGELIST}test-credentials/", form_data(fake_providers, base_url="http://example.com/")
    )
    assert response.status_code == 400 and "base_url" in response.json()["errors"]


@pytest.fixture
def other_host():
    """A loopback port that listens and records nothing but whether anything connected: another host's URL."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)

        def connected() -> bool:
            try:
                connection, _ = listener.accept()
            except BlockingIOError:
                return False
            connection.close()
            return True

        yield f"http://127.0.0.1:{listener.getsockname()[1]}/gemini", connected


def test_testing_an_unsaved_new_host_with_the_stored_key_is_refused(
    superadmin_session_client, config, fake_providers, other_host
):
    url, connected = other_host

    response = superadmin_session_client.post(
        f"{CHANGELIST}{config.pk}/test-credentials/",
        form_data(fake_providers, new_api_key="", display_name="Existing", base_url=url),
    )

    assert response.status_code == 400
    [error] = response.json()["errors"]["new_api_key"]
    assert "Enter the key again" in error["message"] and "127.0.0.1" in error["message"]
    assert not connected()
    assert KEY not in response.content.decode()


def test_saving_a_new_host_without_the_key_is_refused_and_with_it_allowed(
    superadmin_session_client, config, fake_providers, other_host
):
    url, _ = other_host
    change = f"{CHANGELIST}{config.pk}/change/"

    refused = superadmin_session_client.post(
        change, form_data(fake_providers, new_api_key="", display_name="Existing", base_url=url)
    )
    assert refused.status_code == 200 and "Enter the key again" in refused.content.decode()
    config.refresh_from_db()
    assert config.base_url == fake_providers.gemini_base_url

    same_host = fake_providers.gemini_base_url.rstrip("/") + "/"
    saved = superadmin_session_client.post(
        change, form_data(fake_providers, new_api_key="", display_name="Existing", base_url=same_host)
    )
    assert saved.status_code == 302  # another path on the same host keeps the key
    saved = superadmin_session_client.post(
        change, form_data(fake_providers, new_api_key=KEY + "-2", display_name="Existing", base_url=url)
    )
    assert saved.status_code == 302
    config.refresh_from_db()
    assert (config.base_url, config.reveal_api_key()) == (url, KEY + "-2")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("new_api_key", "AIza-key\r\nX-Injected: 1"),
        ("new_api_key", "AIza-kéy-0001"),
        ("model_name", "../../../admin"),
        ("model_name", "models/../../admin"),
        ("base_url", "https://proxy.example.com:99999/v1"),
    ],
)
def test_the_form_names_keys_models_and_urls_that_cannot_be_sent(
    superadmin_session_client, fake_providers, field, value
):
    response = superadmin_session_client.post(
        f"{CHANGELIST}test-credentials/", form_data(fake_providers, **{field: value})
    )

    assert response.status_code == 400 and list(response.json()["errors"]) == [field]
