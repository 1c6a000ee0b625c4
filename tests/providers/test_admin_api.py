import json
import logging

import pytest
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.db import connection
from rest_framework.test import APIClient

from providers.models import ProviderConfig

pytestmark = pytest.mark.django_db

LIST_URL = "/api/v1/super-admin/providers/configs"
TEST_NEW_URL = "/api/v1/super-admin/providers/configs/test"
GEMINI_KEY = "AIzaSyA-valid-demo-key-0001-f3x9"
OPENAI_KEY = "sk-proj-valid-demo-key-0002-wxyz"


def detail_url(pk: int) -> str:
    return f"{LIST_URL}/{pk}"


@pytest.fixture
def admin_client(superadmin_token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {superadmin_token}")
    return client


@pytest.fixture
def gemini_body(fake_providers) -> dict:
    # The seed's example body, pointed at the fake Gemini server.
    return {
        "provider_type": "gemini",
        "api_key": GEMINI_KEY,
        "model_name": "gemini-2.5-flash",
        "display_name": "Gemini Fast",
        "is_active": True,
        "default_for_extraction": True,
        "base_url": fake_providers.gemini_base_url,
    }


@pytest.fixture
def saved_config(admin_client, gemini_body) -> ProviderConfig:
    response = admin_client.post(LIST_URL, gemini_body, format="json")
    assert response.status_code == 201, response.content
    return ProviderConfig.objects.get(pk=response.json()["id"])


def entries_for(config_pk) -> list[LogEntry]:
    return list(LogEntry.objects.filter(object_id=str(config_pk)).order_by("pk"))


# Create, read, update, delete --------------------------------------------------------------------------------


def test_it_creates_a_config_from_the_seeds_example_body(admin_client, gemini_body, superadmin):
    response = admin_client.post(LIST_URL, gemini_body, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["display_name"] == "Gemini Fast"
    assert body["api_key_masked"] == "AIza…f3x9"
    assert "api_key" not in body
    assert body["tasks"] == ["extraction"]
    assert body["created_by"] == superadmin.username
    config = ProviderConfig.objects.get(pk=body["id"])
    assert config.reveal_api_key() == GEMINI_KEY
    assert config.default_for_extraction and not config.default_for_cover_letter
    assert config.key_updated_at is not None
    [entry] = entries_for(config.pk)
    assert entry.action_flag == ADDITION and entry.user == superadmin


def test_it_lists_and_shows_configs_with_the_key_masked(admin_client, saved_config):
    listed = admin_client.get(LIST_URL)
    shown = admin_client.get(detail_url(saved_config.pk))

    assert listed.status_code == 200 and shown.status_code == 200
    assert [item["id"] for item in listed.json()] == [saved_config.pk]
    assert shown.json()["api_key_masked"] == "AIza…f3x9"
    assert GEMINI_KEY not in listed.content.decode() + shown.content.decode()


def test_an_update_without_a_key_keeps_the_stored_key(admin_client, saved_config, gemini_body):
    body = {**gemini_body, "model_name": "gemini-2.5-pro"}
    del body["api_key"]
    response = admin_client.put(detail_url(saved_config.pk), body, format="json")

    assert response.status_code == 200, response.content
    saved_config.refresh_from_db()
    assert saved_config.model_name == "gemini-2.5-pro"
    assert saved_config.reveal_api_key() == GEMINI_KEY
    messages = [entry.change_message for entry in entries_for(saved_config.pk)]
    assert json.loads(messages[-1]) == [
        {"changed": {"fields": ["model name"], "values": {"model name": ["gemini-2.5-flash", "gemini-2.5-pro"]}}}
    ]


def test_an_update_with_an_empty_key_keeps_the_stored_key(admin_client, saved_config):
    key_updated_at = saved_config.key_updated_at
    response = admin_client.patch(detail_url(saved_config.pk), {"api_key": "", "priority": 5}, format="json")

    assert response.status_code == 200
    saved_config.refresh_from_db()
    assert saved_config.priority == 5
    assert saved_config.reveal_api_key() == GEMINI_KEY
    assert saved_config.key_updated_at == key_updated_at


def test_a_new_key_replaces_the_old_one_and_is_recorded_as_a_rotation(admin_client, saved_config, superadmin):
    new_key = "AIzaSyB-rotated-demo-key-9999-k9k9"
    response = admin_client.patch(detail_url(saved_config.pk), {"api_key": new_key}, format="json")

    assert response.status_code == 200
    assert response.json()["api_key_masked"] == "AIza…k9k9"
    saved_config.refresh_from_db()
    assert saved_config.reveal_api_key() == new_key
    entries = entries_for(saved_config.pk)
    assert json.loads(entries[-2].change_message) == [{"changed": {"fields": ["API key"], "values": {}}}]
    assert entries[-1].change_message == "Rotated the API key."
    assert all(entry.user == superadmin for entry in entries)


def test_it_deletes_a_config_and_audits_the_deletion(admin_client, saved_config, superadmin):
    response = admin_client.delete(detail_url(saved_config.pk))

    assert response.status_code == 204
    assert not ProviderConfig.objects.filter(pk=saved_config.pk).exists()
    entry = entries_for(saved_config.pk)[-1]
    assert entry.action_flag == DELETION and entry.object_repr == "Gemini Fast" and entry.user == superadmin


def test_an_unknown_config_is_a_404(admin_client):
    assert admin_client.get(detail_url(999999)).status_code == 404


# Validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"provider_type": "mistral"}, "provider_type"),
        ({"model_name": ""}, "model_name"),
        ({"model_name": "   "}, "model_name"),
        ({"model_name": "gemini\u0018x"}, "model_name"),
        ({"model_name": "gemini 2.5"}, "model_name"),
        ({"base_url": "not a url"}, "base_url"),
        ({"base_url": "ftp://127.0.0.1/x"}, "base_url"),
        ({"base_url": "http://api.example.com/v1"}, "base_url"),
        ({"daily_token_limit": -1}, "daily_token_limit"),
        ({"monthly_token_limit": -5}, "monthly_token_limit"),
        ({"input_price_per_million": "-0.5"}, "input_price_per_million"),
        ({"is_activ": False}, "is_activ"),
        ({"api_key": ""}, "api_key"),
        ({"weight": 0}, "weight"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_saved(admin_client, gemini_body, change, field):
    response = admin_client.post(LIST_URL, {**gemini_body, **change}, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert not ProviderConfig.objects.exists()
    assert not LogEntry.objects.exists()


def test_a_missing_key_on_create_is_a_400(admin_client, gemini_body):
    del gemini_body["api_key"]
    response = admin_client.post(LIST_URL, gemini_body, format="json")
    assert response.status_code == 400 and "api_key" in response.json()


def test_a_duplicate_display_name_is_a_400(admin_client, saved_config, gemini_body):
    response = admin_client.post(LIST_URL, gemini_body, format="json")
    assert response.status_code == 400 and "display_name" in response.json()
    assert ProviderConfig.objects.count() == 1


def test_plain_http_to_a_remote_host_is_allowed_only_when_the_setting_says_so(admin_client, gemini_body, settings):
    settings.ALLOW_INSECURE_PROVIDER_URLS = True
    response = admin_client.post(LIST_URL, {**gemini_body, "base_url": "http://proxy.internal/gemini"}, format="json")
    assert response.status_code == 201


def test_a_bad_update_changes_nothing(admin_client, saved_config):
    response = admin_client.patch(
        detail_url(saved_config.pk), {"model_name": "x", "daily_token_limit": -1}, format="json"
    )
    assert response.status_code == 400
    saved_config.refresh_from_db()
    assert saved_config.model_name == "gemini-2.5-flash" and saved_config.daily_token_limit is None


# Credential tests ----------------------------------------------------------------------------------------------


def test_testing_before_saving_checks_the_credentials_and_saves_nothing(admin_client, gemini_body):
    response = admin_client.post(TEST_NEW_URL, gemini_body, format="json")

    assert response.status_code == 200
    assert response.json()["ok"] is True
    assert response.json()["model"]
    assert not ProviderConfig.objects.exists()
    [entry] = LogEntry.objects.all()
    assert entry.change_message == "Tested unsaved credentials: ok."


def test_testing_before_saving_reports_a_bad_key(admin_client, gemini_body):
    response = admin_client.post(TEST_NEW_URL, {**gemini_body, "api_key": "AIza-invalid-key-0000"}, format="json")

    assert response.status_code == 200
    assert response.json()["ok"] is False
    assert response.json()["error_type"] == "authentication"
    assert not ProviderConfig.objects.exists()


def test_testing_before_saving_works_with_a_name_already_taken(admin_client, saved_config, gemini_body):
    response = admin_client.post(TEST_NEW_URL, gemini_body, format="json")
    assert response.status_code == 200 and response.json()["ok"] is True


def test_testing_before_saving_validates_the_body(admin_client, gemini_body):
    response = admin_client.post(TEST_NEW_URL, {**gemini_body, "provider_type": "nope"}, format="json")
    assert response.status_code == 400 and "provider_type" in response.json()


def test_testing_a_saved_config_records_the_result(admin_client, saved_config):
    response = admin_client.post(f"{detail_url(saved_config.pk)}/test")

    assert response.status_code == 200 and response.json()["ok"] is True
    saved_config.refresh_from_db()
    assert saved_config.last_test_ok is True and saved_config.last_tested_at is not None
    assert entries_for(saved_config.pk)[-1].change_message == "Tested credentials: ok."


@pytest.mark.parametrize(
    ("change", "error_type"),
    [
        ({"api_key": "AIza-revoked-key-000000000"}, "authentication"),
        ({"model_name": "gemini-0.1-imaginary"}, "model_not_found"),
        # A new host needs the key entered again.
        ({"base_url": "http://127.0.0.1:9/gemini", "api_key": GEMINI_KEY}, "unreachable"),
    ],
)
def test_a_failing_saved_config_answers_200_with_the_error_and_records_it(
    admin_client, saved_config, change, error_type
):
    assert admin_client.patch(detail_url(saved_config.pk), change, format="json").status_code == 200
    response = admin_client.post(f"{detail_url(saved_config.pk)}/test")

    assert response.status_code == 200
    assert response.json()["ok"] is False and response.json()["error_type"] == error_type
    assert response.json()["message"]
    saved_config.refresh_from_db()
    assert saved_config.last_test_ok is False and saved_config.last_test_error.startswith(error_type)


def test_an_openai_config_is_tested_through_the_openai_fake(admin_client, fake_providers):
    body = {
        "provider_type": "openai",
        "api_key": OPENAI_KEY,
        "model_name": "gpt-4o-mini",
        "display_name": "OpenAI Mini",
        "base_url": fake_providers.openai_base_url,
        "default_for_cover_letter": True,
    }
    created = admin_client.post(LIST_URL, body, format="json")
    tested = admin_client.post(f"{detail_url(created.json()['id'])}/test")
    assert tested.json()["ok"] is True


def test_a_claude_config_reports_a_rate_limit(admin_client, fake_providers):
    body = {
        "provider_type": "claude",
        "api_key": "sk-ant-api03-demo~fail=429",
        "model_name": "claude-sonnet-4-5",
        "display_name": "Claude",
        "base_url": fake_providers.anthropic_base_url,
    }
    response = admin_client.post(TEST_NEW_URL, body, format="json")
    assert response.json()["ok"] is False and response.json()["error_type"] == "rate_limited"


# Secrets -------------------------------------------------------------------------------------------------------


def test_no_response_log_record_or_log_entry_contains_the_key(admin_client, gemini_body, caplog):
    caplog.set_level(logging.DEBUG)
    rotated_key = "AIzaSyC-second-secret-key-5555-zzzz"
    bodies = []
    created = admin_client.post(LIST_URL, gemini_body, format="json")
    pk = created.json()["id"]
    bodies.append(created.content)
    bodies.append(admin_client.post(TEST_NEW_URL, gemini_body, format="json").content)
    bodies.append(admin_client.patch(detail_url(pk), {"api_key": rotated_key}, format="json").content)
    bodies.append(admin_client.post(f"{detail_url(pk)}/test").content)
    bodies.append(admin_client.post(TEST_NEW_URL, {**gemini_body, "api_key": "AIza-invalid-zz"}, format="json").content)
    bodies.append(admin_client.get(LIST_URL).content)
    bodies.append(admin_client.delete(detail_url(pk)).content)

    audit = "".join(f"{entry.object_repr} {entry.change_message}" for entry in LogEntry.objects.all())
    everything = b"".join(bodies).decode() + caplog.text + audit
    for secret in (GEMINI_KEY, rotated_key, "AIza-invalid-zz"):
        assert secret not in everything
    # Not even the masked form goes into logs or the audit trail.
    for hint in ("AIza…f3x9", "AIza…zzzz"):
        assert hint not in caplog.text + audit
    with connection.cursor() as cursor:
        cursor.execute("SELECT change_message, object_repr FROM django_admin_log")
        assert not any(GEMINI_KEY in str(row) for row in cursor.fetchall())


# Who may call --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "list"),
        ("post", "list"),
        ("post", "test-new"),
        ("get", "detail"),
        ("put", "detail"),
        ("patch", "detail"),
        ("delete", "detail"),
        ("post", "test-saved"),
    ],
)
def test_every_endpoint_refuses_outsiders_and_admits_a_verified_superadmin(
    outsiders, admin_client, saved_config, gemini_body, method, path
):
    url = {
        "list": LIST_URL,
        "test-new": TEST_NEW_URL,
        "detail": detail_url(saved_config.pk),
        "test-saved": f"{detail_url(saved_config.pk)}/test",
    }[path]
    body = {**gemini_body, "display_name": "Another"} if method in {"post", "put", "patch"} else None
    count_before = ProviderConfig.objects.count()

    for client, expected in outsiders:
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == expected, (client, response.content)
    assert ProviderConfig.objects.count() == count_before
    saved_config.refresh_from_db()
    assert saved_config.display_name == "Gemini Fast"

    response = getattr(admin_client, method)(url, body, format="json")
    assert response.status_code in {200, 201, 204}


def test_a_verified_admin_session_works_too(superadmin_session_client, gemini_body):
    response = superadmin_session_client.post(LIST_URL, gemini_body, content_type="application/json")
    assert response.status_code == 201


@pytest.mark.parametrize(
    "key",
    [
        "AIza-key\r\nX-Injected: 1",
        "AIza-key\nsecond-line",
        "AIza-key\x00nul",
        "AIza-key\x7fdel",
        "AIza-kéy-0001",
        "AIza key with spaces",
    ],
)
def test_it_refuses_api_keys_that_cannot_go_into_a_header(admin_client, gemini_body, saved_config, key):
    for url, method in [(LIST_URL, admin_client.post), (TEST_NEW_URL, admin_client.post)]:
        response = method(url, {**gemini_body, "display_name": "Other", "api_key": key}, format="json")
        assert response.status_code == 400 and list(response.json()) == ["api_key"], response.content
    response = admin_client.patch(detail_url(saved_config.pk), {"api_key": key}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["api_key"]
    saved_config.refresh_from_db()
    assert saved_config.reveal_api_key() == GEMINI_KEY


@pytest.mark.parametrize("base_url", ["https://proxy.example.com:99999/v1", "https://proxy.example.com:0/v1"])
def test_it_refuses_a_base_url_with_an_impossible_port(admin_client, gemini_body, base_url):
    response = admin_client.post(LIST_URL, {**gemini_body, "base_url": base_url}, format="json")

    assert response.status_code == 400 and list(response.json()) == ["base_url"], response.content
    assert "65535" in response.json()["base_url"][0]


@pytest.mark.parametrize(
    ("provider_type", "model_name"),
    [
        ("gemini", "../../../admin"),
        ("gemini", "models/../../admin"),
        ("gemini", "gemini-2.5-flash/../../x"),
        ("gemini", "gemini 2.5"),
        ("gemini", "gemini-2.5\t-flash"),
        ("gemini", "gemini\x00flash"),
        ("gemini", "gemini-2.5-flash?key=x"),
        ("openai", "models/gpt-4o-mini"),  # Gemini's prefix, a path anywhere else
        ("openai", "gpt-4o..mini"),
    ],
)
def test_it_refuses_model_names_that_are_not_model_ids(admin_client, gemini_body, provider_type, model_name):
    body = {**gemini_body, "provider_type": provider_type, "model_name": model_name}

    for url in (LIST_URL, TEST_NEW_URL):
        response = admin_client.post(url, body, format="json")
        assert response.status_code == 400 and list(response.json()) == ["model_name"], response.content
    assert not ProviderConfig.objects.exists()


@pytest.mark.parametrize(
    ("provider_type", "model_name"),
    [
        ("gemini", "models/gemini-2.5-flash"),
        ("gemini", "gemma-4-31b-it"),
        ("openai", "gpt-4o-mini-2024-07-18"),
        ("openai", "ft:gpt-4o-mini:acme:custom_suffix:abc123"),
        ("claude", "claude-3-5-sonnet@20240620"),
    ],
)
def test_it_accepts_the_model_ids_providers_use(admin_client, gemini_body, provider_type, model_name):
    body = {**gemini_body, "provider_type": provider_type, "model_name": model_name, "base_url": ""}

    response = admin_client.post(LIST_URL, body, format="json")

    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    "change",
    [
        {"base_url": "https://proxy.example.com/gemini"},
        {"base_url": ""},  # back to Google's own API
        {"provider_type": "openai", "model_name": "gpt-4o-mini", "base_url": ""},
        {"base_url": "http://127.0.0.1:9/gemini"},  # another port of the same host is another server
    ],
)
def test_a_new_host_for_a_stored_key_needs_the_key_again(admin_client, saved_config, change):
    before = saved_config.base_url

    response = admin_client.patch(detail_url(saved_config.pk), change, format="json")

    assert response.status_code == 400 and list(response.json()) == ["api_key"], response.content
    assert "Enter the key again" in response.json()["api_key"][0]
    saved_config.refresh_from_db()
    assert (saved_config.base_url, saved_config.provider_type) == (before, "gemini")
    again = admin_client.patch(detail_url(saved_config.pk), {**change, "api_key": GEMINI_KEY}, format="json")
    assert again.status_code == 200, again.content


def test_the_same_host_with_another_path_keeps_the_stored_key(admin_client, saved_config):
    response = admin_client.patch(detail_url(saved_config.pk), {"base_url": saved_config.base_url + "/"}, format="json")

    assert response.status_code == 200, response.content
