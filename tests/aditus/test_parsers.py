"""JSON the DRF endpoints refuse with a 400 instead of failing on later: deep nesting, lone surrogates."""

import pytest

from aditus.parsers import MAX_JSON_DEPTH
from providers.models import ProviderConfig

pytestmark = pytest.mark.django_db

TOKEN_URL = "/api/v1/auth/token"
CONFIGS_URL = "/api/v1/super-admin/providers/configs"


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 100_000])
def test_the_anonymous_token_endpoint_refuses_json_nested_too_deeply(api_client, levels, caplog):
    body = '{"username": ' + deep(levels) + ', "password": "x"}'

    response = api_client.post(TOKEN_URL, body, content_type="application/json")

    assert response.status_code == 400, response.content
    assert "nested too deeply" in response.json()["detail"]
    assert "Traceback" not in caplog.text
    assert not [record for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")]


def test_the_config_api_refuses_json_nested_too_deeply(superadmin_api_client):
    response = superadmin_api_client.post(
        CONFIGS_URL, '{"display_name": "x", "weight": ' + deep(50_000) + "}", content_type="application/json"
    )

    assert response.status_code == 400, response.content
    assert "nested too deeply" in response.json()["detail"]
    assert not ProviderConfig.objects.exists()


def test_json_as_deep_as_the_limit_is_parsed_and_judged_by_the_serializer(api_client):
    body = '{"username": ' + deep(MAX_JSON_DEPTH - 1) + ', "password": "x"}'

    response = api_client.post(TOKEN_URL, body, content_type="application/json")

    assert response.status_code == 400
    assert "username" in response.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (r'{"username": "ada\ud800", "password": "x"}', "username"),
        (r'{"username": "ada", "password": "\udfff"}', "password"),
        (r'{"username": "ada", "password": "x", "extra": {"deep": ["\ud83d"]}}', "extra"),
    ],
)
def test_a_lone_surrogate_is_refused_naming_the_field(api_client, body, field):
    response = api_client.post(TOKEN_URL, body, content_type="application/json")

    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert "lone surrogate" in response.json()[field][0]


def test_a_lone_surrogate_never_reaches_the_database_of_the_config_api(superadmin_api_client):
    body = r'{"provider_type": "openai", "display_name": "GPT \ud800", "model_name": "gpt-4o", "api_key": "sk-x"}'

    response = superadmin_api_client.post(CONFIGS_URL, body, content_type="application/json")

    assert response.status_code == 400, response.content
    assert "display_name" in response.json()
    assert not ProviderConfig.objects.exists()
