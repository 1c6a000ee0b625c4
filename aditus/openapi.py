"""The OpenAPI schema (drf-spectacular): bearer auth, the error bodies, and the endpoints it cannot see by itself.

drf-spectacular documents the DRF views from their serializers and `@extend_schema` decorations, which use the
responses below. The four task endpoints are plain async views, and the probes and /metrics plain Django views, so
`add_undiscovered_paths` (a postprocessing hook, see SPECTACULAR_SETTINGS) writes their path items. The task
outputs are the very schemas the providers' answers are validated against (tasks.schemas), and the input limits
are read from the settings when the schema is generated, so the documentation cannot drift from what is checked.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiResponse
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework import exceptions


def schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


# --- the DRF views: authentication and error bodies -------------------------------------------------------------


BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "A token from POST /api/v1/auth/token; super-admins obtain theirs with `otp_token`.",
}


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <token>` (aditus.authentication.BearerTokenAuthentication) in the schema."""

    target_class = "aditus.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return BEARER_SCHEME


class ModelSerializerScheme(OpenApiSerializerExtension):
    """What drf-spectacular misses about model serializers.

    Requests: a serializer that refuses unknown fields (providers.serializers.RejectUnknownFieldsMixin) says so.
    Responses: a read-only field loses its model field's `null` and `blank` (DRF keeps neither on read-only fields),
    so e.g. `created_by` of a config made by a command is null and an unset `base_url` is "": put them back.
    """

    target_class = "rest_framework.serializers.ModelSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        serializer = self.target
        schema = auto_schema._map_serializer(serializer, direction, bypass_extensions=True)
        if type(serializer).__doc__ is None:
            schema.pop("description", None)  # not a mixin's docstring in the serializer's place
        if direction == "request":
            if getattr(serializer, "rejects_unknown_fields", False):  # providers.serializers.RejectUnknownFieldsMixin
                schema["additionalProperties"] = False
            return schema
        model = serializer.Meta.model
        for name, field in serializer.fields.items():
            if name not in schema.get("properties", {}) or not field.read_only or "." in field.source:
                continue
            try:
                model_field = model._meta.get_field(field.source)
            except FieldDoesNotExist:
                continue
            schema["properties"][name] = _with_model_facts(schema["properties"][name], model_field)
        return schema


def _with_model_facts(prop: dict[str, Any], model_field) -> dict[str, Any]:
    """`prop` (a response property) allowing "" when the model field is blank, and null when it is null."""
    if model_field.is_relation:
        prop.pop("description", None)  # the related model's field's help text ("Required. ...") misleads here
    if model_field.blank and isinstance(model_field, models.CharField) and "format" in prop:
        meta = {key: prop.pop(key) for key in ("readOnly", "description", "title") if key in prop}
        prop = {"anyOf": [prop, {"type": "string", "maxLength": 0}], **meta}
    if not model_field.null:
        return prop
    types = prop.get("type")
    if isinstance(types, str):
        prop["type"] = [types, "null"]
    elif isinstance(types, list):
        prop["type"] = types if "null" in types else [*types, "null"]
    elif "anyOf" in prop:
        if {"type": "null"} not in prop["anyOf"]:
            prop["anyOf"].append({"type": "null"})
    elif "$ref" in prop:
        prop = {"anyOf": [{"$ref": prop.pop("$ref")}, {"type": "null"}], **prop}
    return prop


ERROR_COMPONENTS: dict[str, dict[str, Any]] = {
    "Detail": {
        "type": "object",
        "description": "A refusal by a DRF view: a message for people and, on some, a stable `code`.",
        "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
        "required": ["detail"],
    },
    "ValidationErrors": {
        "type": "object",
        "description": (
            "Invalid input: for each field (or `non_field_errors`) a list of messages; a list or object field "
            "gives an object keyed by item index or key instead."
        ),
        "additionalProperties": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}]},
    },
}


def detail(description: str) -> OpenApiResponse:
    return OpenApiResponse(schema_ref("Detail"), description=description)


INVALID_QUERY = OpenApiResponse(schema_ref("ValidationErrors"), description="The query is invalid; the body says why.")
INVALID = OpenApiResponse(
    {"anyOf": [schema_ref("ValidationErrors"), schema_ref("Detail")]},
    description="The input is invalid (messages per field), or the body is not readable JSON (`detail`).",
)
NOT_AUTHENTICATED = detail(
    "No credentials, or a bearer token that is malformed, unknown, revoked or expired (`WWW-Authenticate: Bearer`)."
)
NOT_SUPERADMIN = detail(
    "The caller is not a super-admin, or not verified by MFA (a bearer token obtained without `otp_token`), or "
    "sent a session request without its CSRF token."
)
NOT_FOUND = detail("No provider configuration has this id.")
NOT_JSON = detail("The body is not JSON: send `Content-Type: application/json`.")
THROTTLED = detail(
    "Too many requests (AUTH_THROTTLE_RATE) or, at the token endpoint, too many failed logins (`code`: "
    "`locked_out`); `Retry-After` says when to try again."
)
# Every super-admin endpoint refuses these two the same way.
SUPERADMIN_REFUSALS = {401: NOT_AUTHENTICATED, 403: NOT_SUPERADMIN}


# --- the docs page ----------------------------------------------------------------------------------------------


class DocsView(SpectacularSwaggerSplitView):
    """Swagger UI, its start-up script served as a file of its own (the CSP allows no inline script).

    A visitor who is not signed in is sent to the admin login rather than shown a bare 401: the people who read the
    docs in a browser are super-admins. Bearer-token clients read /api/schema/ instead.
    """

    def handle_exception(self, exc):
        if isinstance(exc, exceptions.NotAuthenticated):
            return redirect_to_login(self.request.get_full_path())
        return super().handle_exception(exc)


# --- what drf-spectacular cannot see: the probes and /metrics (the task endpoints: tasks.openapi) -------------

JSON = "application/json"


def _status_body(description: str, *, reason: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {"status": {"type": "string", "enum": ["unavailable" if reason else "ok"]}}
    if reason:
        properties["reason"] = {"type": "string"}
    return {
        "description": description,
        "content": {JSON: {"schema": {"type": "object", "properties": properties, "required": list(properties)}}},
    }


def _text(description: str, *media_types: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}} for media in media_types}}


def operations_paths() -> dict[str, Any]:
    """The path items of the probes (aditus.health) and the Prometheus scrape (usage.metrics)."""
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness probe",
                "description": "200 while the process can serve requests; touches nothing else.",
                "tags": ["operations"],
                "security": [],
                "responses": {"200": _status_body("The process is alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness probe",
                "description": "200 when the database answers and has every migration applied.",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": _status_body("Ready for traffic."),
                    "503": _status_body("Not ready; `reason` says why.", reason=True),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "description": "The Prometheus text format (OpenMetrics when the scraper asks for it), for the "
                "addresses in METRICS_ALLOWED_IPS and, when METRICS_TOKEN is set, with that token. The metrics are "
                "listed in deploy/monitoring/README.md.",
                "tags": ["operations"],
                "security": [{}, {"metricsToken": []}],
                "responses": {
                    "200": _text("The metrics.", "text/plain", "application/openmetrics-text"),
                    "401": _text("METRICS_TOKEN is set and was not sent.", "text/plain"),
                    "403": _text("The address is not in METRICS_ALLOWED_IPS.", "text/plain"),
                },
            }
        },
    }


def add_undiscovered_paths(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add the probes and /metrics, the error components, and the 413 every
    operation with a body may answer. Runs after the apps' hooks (settings: tasks.openapi adds the task
    endpoints)."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(ERROR_COMPONENTS)
    components.setdefault("securitySchemes", {}).update(
        {
            "metricsToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "METRICS_TOKEN, when set; unrelated to the API's tokens.",
            },
            # Named here too, so the task endpoints can use them whichever DRF views exist.
            "bearerAuth": BEARER_SCHEME,
            "cookieAuth": {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME},
        }
    )
    result["paths"] = {**result.get("paths", {}), **operations_paths()}
    # aditus.body_limit answers any operation that takes a body with a 413 when the body is over its limit.
    for item in result["paths"].values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault("413", BODY_TOO_LARGE)
    return result


BODY_TOO_LARGE = {
    "description": "The body is over its limit (MAX_REQUEST_BODY_BYTES; for the image upload TASK_MAX_IMAGE_BYTES and "
    "its form), refused before it was read: `detail` and `error.message` say so, `error.limit` is the limit in bytes.",
    "content": {JSON: {"schema": {"allOf": [schema_ref("Detail"), schema_ref("TaskError")]}}},
}
