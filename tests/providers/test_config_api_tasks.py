"""The config API takes `tasks` as a list on input, as it gives it on output, next to the default_for_* flags."""

import pytest

from providers.models import ProviderConfig

pytestmark = pytest.mark.django_db

CONFIGS = "/api/v1/super-admin/providers/configs"


@pytest.fixture
def body(fake_providers) -> dict:
    return {
        "provider_type": "gemini",
        "api_key": "AIzaSyA-tasks-list-secret-key-t1t2",
        "model_name": "gemini-2.5-flash",
        "display_name": "Gemini Tasks",
        "base_url": fake_providers.gemini_base_url,
    }


def test_a_config_is_created_with_a_list_of_tasks(superadmin_api_client, body):
    response = superadmin_api_client.post(CONFIGS, {**body, "tasks": ["extraction", "cover_letter"]}, format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["tasks"] == ["extraction", "cover_letter"]
    config = ProviderConfig.objects.get()
    assert config.default_for_extraction and config.default_for_cover_letter
    assert not config.default_for_image_validation and not config.default_for_cv_drafting


def test_a_list_of_tasks_replaces_the_served_tasks_on_update(superadmin_api_client, body):
    created = superadmin_api_client.post(CONFIGS, {**body, "default_for_extraction": True}, format="json").json()

    response = superadmin_api_client.patch(f"{CONFIGS}/{created['id']}", {"tasks": ["cv_drafting"]}, format="json")

    assert response.status_code == 200 and response.json()["tasks"] == ["cv_drafting"]
    config = ProviderConfig.objects.get()
    assert config.tasks == ["cv_drafting"] and not config.default_for_extraction
    assert superadmin_api_client.patch(f"{CONFIGS}/{config.pk}", {"tasks": []}, format="json").json()["tasks"] == []


def test_the_default_for_flags_still_work(superadmin_api_client, body):
    response = superadmin_api_client.post(CONFIGS, {**body, "default_for_image_validation": True}, format="json")

    assert response.status_code == 201 and response.json()["tasks"] == ["image_validation"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (["extraction", "translation"], "Unknown task(s): translation. The tasks are extraction, image_validation"),
        (["extraction", "extraction"], "Name each task once."),
        ("extraction", 'Expected a list of items but got type "str".'),
    ],
)
def test_a_bad_task_list_is_a_400_naming_the_problem(superadmin_api_client, body, tasks, message):
    response = superadmin_api_client.post(CONFIGS, {**body, "tasks": tasks}, format="json")

    assert response.status_code == 400
    assert message in " ".join(response.json()["tasks"])
    assert not ProviderConfig.objects.exists()


def test_tasks_and_flags_together_are_a_400(superadmin_api_client, body):
    response = superadmin_api_client.post(
        CONFIGS, {**body, "tasks": ["extraction"], "default_for_cv_drafting": False}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["tasks"] == ["Give either tasks or the flags default_for_cv_drafting, not both."]
