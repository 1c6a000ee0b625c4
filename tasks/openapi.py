"""The task endpoints in the OpenAPI schema: plain async views that drf-spectacular cannot see.

`add_task_paths` is a drf-spectacular postprocessing hook (settings.SPECTACULAR_SETTINGS), run before
aditus.openapi's own.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings

from aditus.openapi import nullable, schema_ref

TASK_SECURITY = [{"bearerAuth": []}, {"cookieAuth": []}]
JSON = "application/json"

# Per status: the name of the response component, the `error.type` values the task endpoints answer with, and when.
TASK_ERRORS: dict[int, tuple[str, list[str], str]] = {
    400: (
        "TaskInvalidInput",
        ["invalid_input", "invalid_json"],
        "The input is invalid; `error.field` names the field.",
    ),
    401: (
        "TaskNotAuthenticated",
        ["not_authenticated", "invalid_token"],
        "No credentials, or a bearer token that is malformed, unknown, revoked or expired.",
    ),
    403: (
        "TaskCsrfFailed",
        ["csrf_failed"],
        "A session request without its CSRF token (bearer-token requests need none).",
    ),
    413: (
        "TaskInputTooLarge",
        ["input_too_large"],
        "The text (TASK_MAX_TEXT_CHARS, all text fields together), the image (TASK_MAX_IMAGE_BYTES) or the body "
        "(DATA_UPLOAD_MAX_MEMORY_SIZE) is too large; `error.limit` is the limit.",
    ),
    415: (
        "TaskUnsupportedMediaType",
        ["unsupported_media_type"],
        "The body is not of the media type this endpoint takes.",
    ),
    422: (
        "TaskProviderRejectedRequest",
        ["provider_rejected_request"],
        "A provider refused the request as invalid, or it could not be built on our side (`error.error_type` "
        "`local`); no other provider was tried, since it would fail there too.",
    ),
    429: (
        "TaskTokenLimitReached",
        ["token_limit_reached"],
        "Every provider for the task is over its token limit; `error.resets_at` and `Retry-After` say when the "
        "first limit resets.",
    ),
    502: (
        "TaskProvidersFailed",
        ["providers_failed", "invalid_output"],
        "Every provider tried failed (`error.last_error_type` says how the last one did), or the structured "
        "output did not match its schema twice.",
    ),
    503: (
        "TaskNoProviderAvailable",
        ["no_provider", "providers_cooling_down"],
        "No provider configuration serves the task (and GEMINI_API_KEY is unset), or every one is cooling down "
        "after repeated failures (`Retry-After`, when known).",
    ),
    504: ("TaskProvidersTimedOut", ["providers_timed_out"], "Every provider tried timed out."),
}

REQUEST_ID_HEADER = {
    "description": "The request's id: the caller's `X-Request-ID` when it is sane, else a new one. It is on the "
    "usage rows and every log line of the request.",
    "schema": {"type": "string"},
}
GATEWAY_TIME_HEADER = {
    "description": "Milliseconds spent in the gateway itself (the total minus the time awaiting providers).",
    "schema": {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
}
RETRY_AFTER_HEADER = {"description": "Seconds until a retry can succeed.", "schema": {"type": "string"}}


def task_components() -> dict[str, dict[str, Any]]:
    from providers.clients.base import ProviderType  # imported here: providers.views import this module
    from usage.models import FAILURE_KINDS

    nonnegative = {"type": "integer", "minimum": 0}
    return {
        "TaskProvider": {
            "type": "object",
            "description": "Who answered: the provider configuration (none for the GEMINI_API_KEY fallback).",
            "properties": {
                "type": {"type": "string", "enum": [member.value for member in ProviderType]},
                "config_id": nullable({"type": "integer"}),
                "name": {"type": "string"},
                "model": {"type": "string"},
            },
            "required": ["type", "config_id", "name", "model"],
        },
        "TaskUsage": {
            "type": "object",
            "description": "Tokens as the provider billed them. `input_tokens` includes the cached and cache-write "
            "tokens, `output_tokens` the reasoning tokens.",
            "properties": {
                name: nonnegative
                for name in (
                    "input_tokens",
                    "output_tokens",
                    "cached_input_tokens",
                    "cache_write_tokens",
                    "reasoning_tokens",
                )
            },
            "required": [
                "input_tokens",
                "output_tokens",
                "cached_input_tokens",
                "cache_write_tokens",
                "reasoning_tokens",
            ],
        },
        "TaskError": {
            "type": "object",
            "description": "A refusal or failure of a task endpoint. `error.type` is stable; `error.message` is for "
            "people. `attempts` counts the provider attempts made (0 when refused before any).",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string", "description": "The input field at fault."},
                        "limit": {"type": "integer", "description": "The limit exceeded."},
                        "task": {"type": "string"},
                        "error_type": {"type": "string", "enum": list(FAILURE_KINDS)},
                        "last_error_type": {"type": "string", "enum": list(FAILURE_KINDS)},
                        "resets_at": {"type": "string", "format": "date-time"},
                    },
                    "required": ["type", "message"],
                },
                "attempts": nonnegative,
                "request_id": {"type": "string"},
            },
            "required": ["error", "attempts", "request_id"],
        },
        "TaskStreamDelta": {
            "type": "object",
            "description": "`event: delta`: more text, as the provider produces it.",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
        "TaskStreamDone": {
            "type": "object",
            "description": "`event: done`: the stream is complete.",
            "properties": {
                "provider": schema_ref("TaskProvider"),
                "usage": schema_ref("TaskUsage"),
                "cost_usd": _cost_schema(),
                "priced": {"type": "boolean"},
                "finish_reason": nullable({"type": "string"}),
                "attempts": {"type": "integer", "minimum": 1},
                "request_id": {"type": "string"},
                "gateway_time_ms": {"type": "number"},
            },
            "required": ["provider", "usage", "cost_usd", "priced", "attempts", "request_id", "gateway_time_ms"],
        },
        "TaskStreamError": {
            "allOf": [
                schema_ref("TaskError"),
                {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"type": {"enum": ["provider_failed", "internal_error"]}},
                        }
                    },
                },
            ],
            "description": "`event: error`: the provider failed after text was sent (`provider_failed`; the text so "
            "far is incomplete), or the answer is complete but could not be recorded (`internal_error`).",
        },
        "TaskStreamEvent": {
            "description": "One Server-Sent Event of a streamed answer: `delta` events as text comes, then one "
            "`done` or, if the provider fails after text was sent, one `error`. `data` is one line of JSON.",
            "oneOf": [_event(name, component) for name, component in STREAM_EVENTS.items()],
        },
        "JobPosting": copy.deepcopy(_task_schemas().JOB_POSTING_SCHEMA),
        "JobImageVerdict": copy.deepcopy(_task_schemas().IMAGE_VERDICT_SCHEMA),
    }


STREAM_EVENTS = {"delta": "TaskStreamDelta", "done": "TaskStreamDone", "error": "TaskStreamError"}


def _event(name: str, component: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": JSON, "contentSchema": schema_ref(component)},
        },
        "required": ["event", "data"],
    }


def _task_schemas():
    from tasks import schemas

    return schemas


def _cost_schema() -> dict[str, Any]:
    return nullable(
        {
            "type": "string",
            "pattern": r"^\d+(\.\d+)?$",
            "description": "USD, exact, as a decimal string; null when the model has no known price.",
        }
    )


def _success(result: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {
            "result": result,
            "provider": schema_ref("TaskProvider"),
            "usage": schema_ref("TaskUsage"),
            "cost_usd": _cost_schema(),
            "priced": {"type": "boolean", "description": "False when the model has no known price."},
            "attempts": {"type": "integer", "minimum": 1, "description": "Provider attempts, fallbacks included."},
            "request_id": {"type": "string"},
        },
        "required": ["result", "provider", "usage", "cost_usd", "priced", "attempts", "request_id"],
    }


def task_error_responses() -> dict[str, dict[str, Any]]:
    """The task endpoints' error responses, as components: one per status."""
    return {name: _error_response(status) for status, (name, _, _) in TASK_ERRORS.items()}


def _error_response(status: int) -> dict[str, Any]:
    _, types, description = TASK_ERRORS[status]
    schema = {
        "allOf": [
            schema_ref("TaskError"),
            {"type": "object", "properties": {"error": {"type": "object", "properties": {"type": {"enum": types}}}}},
        ]
    }
    headers = {"X-Request-ID": REQUEST_ID_HEADER}
    if status == 401:
        headers["WWW-Authenticate"] = {"schema": {"type": "string"}, "required": True}
    if status in (429, 503):
        headers["Retry-After"] = RETRY_AFTER_HEADER
    return {"description": description, "headers": headers, "content": {JSON: {"schema": schema}}}


def _task_operation(
    *,
    operation_id: str,
    summary: str,
    description: str,
    request_body: dict[str, Any],
    ok: dict[str, Any],
    statuses: tuple[int, ...],
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    responses.update({str(status): {"$ref": f"#/components/responses/{TASK_ERRORS[status][0]}"} for status in statuses})
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "tags": ["tasks"],
            "security": TASK_SECURITY,
            "parameters": [
                {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "description": "An id of your own to trace the request by: a letter or digit, then up to 63 "
                    "letters, digits or `._:-`. Anything else is replaced by a new id.",
                    "schema": {"type": "string"},
                }
            ],
            "requestBody": request_body,
            "responses": responses,
        }
    }


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def _ok(schema: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    from tasks import sse

    content: dict[str, Any] = {JSON: {"schema": schema}}
    if stream:
        # The schema of one event, as OpenAPI 3.2 has `itemSchema` say (and schemathesis reads `schema` before 3.2).
        content[sse.CONTENT_TYPE.split(";")[0]] = {"schema": schema_ref("TaskStreamEvent")}
    return {
        "description": "The result, with who served it, the tokens and the cost."
        + (" With `stream`, the same as Server-Sent Events." if stream else ""),
        "headers": {"X-Request-ID": REQUEST_ID_HEADER, "X-Gateway-Time-Ms": GATEWAY_TIME_HEADER},
        "content": content,
    }


def task_paths() -> dict[str, Any]:
    """The path items of the four task endpoints (tasks.urls), for the limits in force."""
    from tasks import images, inputs, prompts

    limit = settings.TASK_MAX_TEXT_CHARS
    upstream = (422, 429, 502, 503, 504)
    json_refusals = (400, 401, 403, 413, 415, *upstream)

    def text(description: str) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": limit, "pattern": r"\S", "description": description}

    def text_or_object(description: str) -> dict[str, Any]:
        return {
            "anyOf": [text("Plain text."), {"type": "object", "minProperties": 1, "description": "Any JSON object."}],
            "description": description,
        }

    language = {
        "anyOf": [
            {"type": "string", "pattern": f"^{inputs._LANGUAGE.pattern}$"},
            {"const": ""},
            {"type": "null"},
        ],
        "description": "A language tag such as en, de or pt-BR.",
    }
    stream = {"type": "boolean", "default": False, "description": "Answer with Server-Sent Events as text comes."}
    total = (
        f"`profile` and `job` together are at most {limit} characters (TASK_MAX_TEXT_CHARS); an object counts as "
        "its JSON."
    )

    extraction = {
        "type": "object",
        "properties": {
            "text": text(f"The job posting's text, at most {limit} characters (TASK_MAX_TEXT_CHARS)."),
            "source_url": {
                "anyOf": [
                    {"type": "string", "format": "uri", "maxLength": inputs.MAX_URL_CHARS, "pattern": "^https?://"},
                    {"const": ""},
                    {"type": "null"},
                ],
                "description": "Where the posting was found; an http(s) URL.",
            },
        },
        "required": ["text"],
    }
    cv = {
        "type": "object",
        "description": total,
        "properties": {
            "profile": text_or_object("The candidate's profile."),
            "job": text_or_object("The job, e.g. the extractor's result."),
            "language": {**language, "description": "The draft's language; by default the profile's."},
            "stream": stream,
        },
        "required": ["profile", "job"],
    }
    letter = {
        "type": "object",
        "description": total,
        "properties": {
            "profile": text_or_object("The candidate's profile."),
            "job": text_or_object("The job, e.g. the extractor's result."),
            "tone": {"type": "string", "enum": list(prompts.TONES), "default": "professional"},
            "language": {**language, "description": "The letter's language; en by default."},
            "stream": stream,
        },
        "required": ["profile", "job"],
    }
    formats = ", ".join(images.ACCEPTED_FORMATS)
    image = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        images.FIELD: {
                            "type": "string",
                            "format": "binary",
                            "contentMediaType": "application/octet-stream",
                            "description": f"A {formats} image of at most {settings.TASK_MAX_IMAGE_BYTES} bytes "
                            f"(TASK_MAX_IMAGE_BYTES), each side from {settings.TASK_MIN_IMAGE_SIDE} to "
                            f"{settings.TASK_MAX_IMAGE_SIDE} pixels and at most {settings.TASK_MAX_IMAGE_PIXELS} "
                            "pixels in all. The type is read from the content, not the name.",
                        }
                    },
                    "required": [images.FIELD],
                }
            }
        },
    }
    return {
        "/api/v1/job-extractor/extract": _task_operation(
            operation_id="job_extract",
            summary="Extract a job posting's data",
            description="Read a job posting's text into structured data (the JobPosting schema).",
            request_body=_json_body(extraction),
            ok=_ok(_success(schema_ref("JobPosting"), "The posting's data.")),
            statuses=json_refusals,
        ),
        "/api/v1/job-extractor/validate-image": _task_operation(
            operation_id="job_image_validate",
            summary="Tell whether an image shows a job posting",
            description="Judge an uploaded image, and read its text.",
            request_body=image,
            ok=_ok(_success(schema_ref("JobImageVerdict"), "The verdict.")),
            statuses=json_refusals,
        ),
        "/api/v1/cv-drafter/draft": _task_operation(
            operation_id="cv_draft",
            summary="Draft a CV for a job",
            description="Write a CV in Markdown from a profile, tailored to a job.",
            request_body=_json_body(cv),
            ok=_ok(
                _success(
                    {
                        "type": "object",
                        "properties": {"markdown": {"type": "string"}},
                        "required": ["markdown"],
                    },
                    "The draft.",
                ),
                stream=True,
            ),
            statuses=json_refusals,
        ),
        "/api/v1/cover-letter/generate": _task_operation(
            operation_id="cover_letter_generate",
            summary="Write a cover letter for a job",
            description="Write a cover letter from a profile for a job, in a tone and a language.",
            request_body=_json_body(letter),
            ok=_ok(
                _success(
                    {
                        "type": "object",
                        "properties": {
                            "text": {"type": "string"},
                            "tone": {"type": "string", "enum": list(prompts.TONES)},
                            "language": {"type": "string"},
                        },
                        "required": ["text", "tone", "language"],
                    },
                    "The letter.",
                ),
                stream=True,
            ),
            statuses=json_refusals,
        ),
    }


def add_task_paths(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add the task endpoints and their components."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(task_components())
    components.setdefault("responses", {}).update(task_error_responses())
    result["paths"] = {**result.get("paths", {}), **task_paths()}
    return result
