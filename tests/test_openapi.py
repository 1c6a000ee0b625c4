"""The OpenAPI schema (/api/schema/) and the Swagger UI (/api/docs/): complete, valid, served offline, not public.

tests/test_fuzz.py checks the schema against the running server at length; these checks run everywhere and fast.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import AsyncClient, Client
from django.urls import URLPattern, URLResolver, get_resolver
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.auth_fixtures import bearer

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_URL = "/api/schema/"
DOCS_URL = "/api/docs/"
TASK_PATHS = (
    "/api/v1/job-extractor/extract",
    "/api/v1/job-extractor/validate-image",
    "/api/v1/cv-drafter/draft",
    "/api/v1/cover-letter/generate",
)
TASK_STATUSES = {"200", "400", "401", "403", "413", "415", "422", "429", "502", "503", "504"}
# Neither is an operation of the API: the schema and the page that shows it.
# The schema and the docs page, and the catch-all that answers a JSON 404 for any other path under /api/.
NOT_DOCUMENTED = {SCHEMA_URL, DOCS_URL, "/^api/"}


@pytest.fixture(scope="module")
def document(tmp_path_factory):
    """The schema as `manage.py spectacular --validate --fail-on-warn` writes it (which fails on any warning)."""
    path = tmp_path_factory.mktemp("openapi") / "schema.json"
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", "--file", str(path))
    return json.loads(path.read_text())


def operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def validator(document, *pointer: str) -> Draft202012Validator:
    """A validator for the schema at `pointer` in `document`, resolving its $refs within the document."""
    registry = Registry().with_resource("urn:openapi", Resource(contents=document, specification=DRAFT202012))
    escaped = "/".join(part.replace("~", "~0").replace("/", "~1") for part in pointer)
    return Draft202012Validator({"$ref": f"urn:openapi#/{escaped}"}, registry=registry)


def response_validator(document, path: str, status: int, media_type: str = "application/json"):
    response = document["paths"][path]["post"]["responses"][str(status)]
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[1]
        return validator(document, "components", "responses", name, "content", media_type, "schema")
    return validator(document, "paths", path, "post", "responses", str(status), "content", media_type, "schema")


# --- the schema itself


def test_the_schema_is_valid_openapi_3_1_without_a_warning(document):
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "aditus"


def _routes(patterns, prefix=""):
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield "/" + re.sub(
                r"<(?:\w+:)?(\w+)>", lambda match: "{id}" if match[1] == "pk" else f"{{{match[1]}}}", route
            )


def test_every_url_of_the_api_and_of_operations_is_documented(document):
    routes = {route for route in _routes(get_resolver().url_patterns) if not route.startswith("/admin/")}

    assert routes - NOT_DOCUMENTED == set(document["paths"])


def test_every_task_endpoint_documents_each_refusal_and_failure(document):
    for path in TASK_PATHS:
        operation = document["paths"][path]["post"]
        assert set(operation["responses"]) == TASK_STATUSES, path
        assert operation["security"] == [{"bearerAuth": []}, {"cookieAuth": []}]


def test_the_streaming_endpoints_document_their_event_stream(document):
    for path in ("/api/v1/cv-drafter/draft", "/api/v1/cover-letter/generate"):
        content = document["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}
    events = document["components"]["schemas"]["TaskStreamEvent"]["oneOf"]
    assert [event["properties"]["event"]["const"] for event in events] == ["delta", "done", "error"]


def test_every_super_admin_operation_documents_its_refusals(document):
    for path, method, operation in operations(document):
        if not path.startswith("/api/v1/super-admin/"):
            continue
        responses = set(operation["responses"])
        assert {"401", "403"} <= responses, (method, path)
        assert operation["security"] == [{"bearerAuth": []}, {"cookieAuth": []}], (method, path)
        if "requestBody" in operation:
            assert {"400", "415"} <= responses, (method, path)
        if "{id}" in path:
            assert "404" in responses, (method, path)


def test_every_operation_is_filed_under_one_declared_tag(document):
    declared = {tag["name"] for tag in document["tags"]}
    for path, method, operation in operations(document):
        assert len(operation["tags"]) == 1 and operation["tags"][0] in declared, (method, path, operation["tags"])


def test_only_the_token_endpoint_and_the_probes_need_no_credentials(document):
    open_operations = {
        path for path, _, operation in operations(document) if operation.get("security", []) in ([], [{}])
    }

    assert open_operations == {"/api/v1/auth/token", "/healthz", "/readyz"}


def test_the_task_results_are_the_schemas_the_providers_answers_are_checked_against(document):
    from tasks.schemas import IMAGE_VERDICT_SCHEMA, JOB_POSTING_SCHEMA

    schemas = document["components"]["schemas"]
    assert schemas["JobPosting"] == JOB_POSTING_SCHEMA
    assert schemas["JobImageVerdict"] == IMAGE_VERDICT_SCHEMA


def test_the_documented_limits_are_the_settings_in_force(settings):
    from drf_spectacular.generators import SchemaGenerator

    settings.TASK_MAX_TEXT_CHARS = 1234
    document = SchemaGenerator().get_schema(request=None, public=True)

    body = document["paths"]["/api/v1/job-extractor/extract"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["properties"]["text"]["maxLength"] == 1234


def test_inputs_that_refuse_unknown_fields_say_so(document):
    schemas = document["components"]["schemas"]
    for name in ("ProviderConfigInputRequest", "PatchedProviderConfigInputRequest", "ProviderSettingsTestRequest"):
        assert schemas[name]["additionalProperties"] is False, name


# --- real answers match the documented ones


@pytest.mark.django_db(transaction=True)
def test_a_real_task_answer_and_real_refusals_match_the_schema(
    document, fake_providers, provider_config, ordinary_user_token
):
    provider_config(base_url=fake_providers.gemini_base_url, api_key="AIzaSy-openapi-0001", default_for_extraction=True)
    path = "/api/v1/job-extractor/extract"
    auth = {"Authorization": bearer(ordinary_user_token)["HTTP_AUTHORIZATION"]}

    async def post(body, **headers):
        return await AsyncClient().post(path, body, content_type="application/json", headers=headers)

    answer = asyncio.run(post({"text": "Senior baker wanted in Lyon, full time."}, **auth))
    invalid = asyncio.run(post({"text": 42}, **auth))
    anonymous = asyncio.run(post({"text": "A job"}))

    assert answer.status_code == 200, answer.content
    for response in (answer, invalid, anonymous):
        errors = list(response_validator(document, path, response.status_code).iter_errors(response.json()))
        assert errors == [], (response.status_code, [error.message for error in errors])
    assert (invalid.status_code, invalid.json()["error"]["type"]) == (400, "invalid_input")
    assert anonymous.status_code == 401


@pytest.mark.django_db(transaction=True)
def test_a_real_event_stream_matches_the_schema(document, fake_providers, provider_config, ordinary_user_token):
    provider_config(
        base_url=fake_providers.gemini_base_url, api_key="AIzaSy-openapi-0002", default_for_cv_drafting=True
    )

    async def stream():
        response = await AsyncClient().post(
            "/api/v1/cv-drafter/draft",
            {"profile": "Ten years of baking.", "job": "Baker", "stream": True},
            content_type="application/json",
            headers={"Authorization": bearer(ordinary_user_token)["HTTP_AUTHORIZATION"]},
        )
        return response, b"".join([chunk async for chunk in response.streaming_content])

    response, body = asyncio.run(stream())

    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    event_schema = validator(document, "components", "schemas", "TaskStreamEvent")
    names = []
    for block in body.decode().strip().split("\n\n"):
        event = dict(line.split(": ", 1) for line in block.split("\n"))
        assert list(event_schema.iter_errors(event)) == []
        component = {"delta": "TaskStreamDelta", "done": "TaskStreamDone", "error": "TaskStreamError"}[event["event"]]
        assert (
            list(validator(document, "components", "schemas", component).iter_errors(json.loads(event["data"]))) == []
        )
        names.append(event["event"])
    assert names[-1] == "done" and set(names[:-1]) == {"delta"}


# --- who may read the schema and the docs


def test_the_schema_is_refused_to_anonymous_callers(db):
    response = Client().get(SCHEMA_URL)

    assert response.status_code == 401


def test_any_signed_in_user_may_read_the_schema(ordinary_user_token, superadmin_session_client):
    by_token = Client().get(SCHEMA_URL, {"format": "json"}, **bearer(ordinary_user_token))
    by_session = superadmin_session_client.get(SCHEMA_URL)

    assert by_token.status_code == 200 and json.loads(by_token.content)["openapi"] == "3.1.0"
    assert by_session.status_code == 200 and by_session.content.startswith(b"openapi: 3.1.0")


def test_the_docs_page_sends_an_anonymous_visitor_to_the_admin_login(db):
    response = Client().get(DOCS_URL)

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/api/docs/"


def test_api_docs_public_opens_the_schema_to_anyone():
    # Settings are read once per process: a process of its own, with the variable set.
    code = (
        "from django.test import Client; client = Client(HTTP_HOST='localhost'); "
        "print(client.get('/api/schema/').status_code, client.get('/api/docs/').status_code)"
    )
    env = {**os.environ, "API_DOCS_PUBLIC": "1", "DEBUG": "1"}

    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )

    assert result.stdout.splitlines()[-1].split() == ["200", "200"], result.stdout + result.stderr


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.urls.append(attributes[name])
        self._in_script = tag == "script" and not attributes.get("src")

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag):
        self._in_script = False


def test_the_docs_page_works_offline_under_the_content_security_policy(superadmin_session_client):
    response = superadmin_session_client.get(DOCS_URL)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in response["Content-Security-Policy"]
    links = _Links()
    links.feed(response.content.decode())
    assert links.inline_scripts == 0
    assert len(links.urls) >= 4  # Swagger UI's script, its presets, its stylesheet, our start-up script
    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//"), url  # nothing from another host
        asset = superadmin_session_client.get(url)
        assert asset.status_code == 200, url
        body = b"".join(asset.streaming_content) if asset.streaming else asset.content
        assert body, url
    start_up = next(url for url in links.urls if "script" in url and url.startswith(DOCS_URL))
    script = superadmin_session_client.get(start_up)
    assert script["Content-Type"].startswith("application/javascript")
    assert SCHEMA_URL.encode() in script.content
