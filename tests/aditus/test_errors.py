"""A wrong path under /api/ answers a JSON 404, as every other API error does, with DEBUG on or off."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

CONFIGS = "/api/v1/super-admin/providers/configs"


@pytest.fixture(params=[False, True], ids=["production", "debug"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


def test_a_trailing_slash_is_a_json_404_naming_the_path_without_it(debug, superadmin_api_client):
    response = superadmin_api_client.get(f"{CONFIGS}/")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": f"There is no API endpoint at {CONFIGS}/. API paths have no trailing slash: use {CONFIGS}."
    }


def test_an_unknown_api_path_is_a_json_404(debug, api_client):
    response = api_client.post("/api/v1/no-such-thing", {"x": 1}, format="json")

    assert response.status_code == 404
    assert response.json() == {"detail": "There is no API endpoint at /api/v1/no-such-thing."}


def test_a_task_path_with_a_trailing_slash_is_a_json_404(debug, api_client, ordinary_user_token):
    response = api_client.post(
        "/api/v1/cv-drafter/draft/", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {ordinary_user_token}"
    )

    assert response.status_code == 404
    assert "use /api/v1/cv-drafter/draft." in response.json()["detail"]


def test_a_session_post_without_a_csrf_token_still_gets_the_json_404(debug, superadmin_session_client):
    client = Client(enforce_csrf_checks=True)
    client.cookies = superadmin_session_client.cookies

    response = client.post(f"{CONFIGS}/", {})

    assert response.status_code == 404 and response["Content-Type"] == "application/json"


def test_the_docs_pages_still_gain_their_trailing_slash(debug, client):
    assert client.get("/api/docs")["Location"] == "/api/docs/"
    assert client.get("/api/schema").status_code == 301


def test_a_wrong_admin_path_is_still_an_html_page(debug, client):
    response = client.get("/admin-nope/")

    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")
