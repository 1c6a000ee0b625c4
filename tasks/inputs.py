"""Reading and checking the task endpoints' JSON input; every refusal names the field or the limit.

Plain functions rather than DRF serializers: a serializer costs ~150-220 µs per request here (field copies,
validator objects), which is most of the gateway's per-request CPU budget; these checks cost ~10 µs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.core.validators import URLValidator

from aditus.parsers import MAX_JSON_DEPTH, lone_surrogate_at, lone_surrogate_message, nested_deeper_than
from tasks.prompts import TONES, as_text
from tasks.responses import TaskError

MAX_URL_CHARS = 2000
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}")
_url_validator = URLValidator(schemes=["http", "https"])


def invalid(field: str, problem: str) -> TaskError:
    return TaskError(400, "invalid_input", f"{field}: {problem}", field=field)


def too_long(fields: str, chars: int) -> TaskError:
    limit = settings.TASK_MAX_TEXT_CHARS
    return TaskError(
        413,
        "input_too_large",
        f"{fields}: {chars} characters, over the limit of {limit} (TASK_MAX_TEXT_CHARS).",
        field=fields,
        limit=limit,
    )


def json_body(request) -> dict[str, Any]:
    """The request's JSON object."""
    if request.content_type != "application/json":
        raise TaskError(
            415, "unsupported_media_type", "Send the request body as JSON (Content-Type: application/json)."
        )
    try:
        body = request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise TaskError(
            413,
            "input_too_large",
            f"The request body is over the limit of {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE).",
            limit=limit,
        ) from None
    try:
        data = json.loads(body)
    except ValueError:
        raise TaskError(400, "invalid_json", "The request body is not valid JSON.") from None
    except RecursionError:
        raise nested_too_deeply() from None
    if not isinstance(data, dict):
        raise TaskError(400, "invalid_json", "The request body must be a JSON object.")
    return data


def nested_too_deeply() -> TaskError:
    return TaskError(400, "invalid_json", f"The request body is nested too deeply (more than {MAX_JSON_DEPTH} levels).")


def check_depth(value: dict[str, Any] | list[Any]) -> None:
    """Refuse a JSON value nested deeper than MAX_JSON_DEPTH."""
    if nested_deeper_than(value):
        raise nested_too_deeply()


def check_encodable(name: str, value: str) -> str:
    """Refuse text holding a lone surrogate (U+D800-U+DFFF, what a front end sends when it cuts a string in the
    middle of an emoji): it is not text, and no provider can be sent it."""
    index = lone_surrogate_at(value)
    if index is not None:
        raise invalid(name, lone_surrogate_message(value, index))
    return value


def text(data: dict[str, Any], name: str) -> str:
    """A required, non-blank string."""
    value = data.get(name)
    if value is None:
        raise invalid(name, "this field is required.")
    if not isinstance(value, str):
        raise invalid(name, "must be a string.")
    if not value.strip():
        raise invalid(name, "must not be blank.")
    return value


def text_or_object(data: dict[str, Any], name: str) -> str | dict[str, Any]:
    """A required non-blank string, or a non-empty JSON object (such as the extractor's output)."""
    value = data.get(name)
    if isinstance(value, dict):
        if not value:
            raise invalid(name, "must not be an empty object.")
        check_depth(value)
        return value
    if value is not None and not isinstance(value, str):
        raise invalid(name, "must be a string or a JSON object.")
    return text(data, name)


def optional_url(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid(name, "must be a string.")
    if len(value) > MAX_URL_CHARS:
        raise invalid(name, f"at most {MAX_URL_CHARS} characters.")
    try:
        _url_validator(value)
    except ValidationError:
        raise invalid(name, "must be an http(s) URL.") from None
    return value


def choice(data: dict[str, Any], name: str, choices: list[str], default: str) -> str:
    value = data.get(name, default)
    if value not in choices:
        raise invalid(name, f"must be one of {', '.join(choices)}.")
    return value


def language(data: dict[str, Any], name: str, default: str | None) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not _LANGUAGE.fullmatch(value):
        raise invalid(name, "must be a language tag such as en, de or pt-BR.")
    return value


def boolean(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise invalid(name, "must be true or false.")
    return value


def check_total(fields: str, *values: str) -> None:
    """Refuse the input when its text, all fields together, is over TASK_MAX_TEXT_CHARS."""
    chars = sum(len(value) for value in values)
    if chars > settings.TASK_MAX_TEXT_CHARS:
        raise too_long(fields, chars)


@dataclass(frozen=True, slots=True)
class ExtractionInput:
    text: str
    source_url: str | None


@dataclass(frozen=True, slots=True)
class WritingInput:
    """A CV draft's or cover letter's input; `profile` and `job` as prompt text."""

    profile: str
    job: str
    language: str | None
    tone: str | None
    stream: bool


def extraction_input(request) -> ExtractionInput:
    data = json_body(request)
    posting = check_encodable("text", text(data, "text"))
    check_total("text", posting)
    return ExtractionInput(text=posting, source_url=optional_url(data, "source_url"))


def _writing_input(request, *, with_tone: bool) -> WritingInput:
    data = json_body(request)
    profile = check_encodable("profile", as_text(text_or_object(data, "profile")))
    job = check_encodable("job", as_text(text_or_object(data, "job")))
    check_total("profile + job", profile, job)
    return WritingInput(
        profile=profile,
        job=job,
        language=language(data, "language", "en" if with_tone else None),
        tone=choice(data, "tone", TONES, "professional") if with_tone else None,
        stream=boolean(data, "stream"),
    )


def cv_draft_input(request) -> WritingInput:
    return _writing_input(request, with_tone=False)


def cover_letter_input(request) -> WritingInput:
    return _writing_input(request, with_tone=True)
