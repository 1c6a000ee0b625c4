"""The four task endpoints: async Django views (DRF has no async views) served under ASGI.

A call is prepared (`tasks.services.request_prepare`: authenticate, read the input, load the candidates and
reserve tokens for the first one), routed (`tasks.router`: call the provider, record the attempt, fall back),
and answered. Nothing holds a database connection while the provider answers, so one process keeps hundreds of
calls in flight. While the database cannot be reached, a call that cannot be prepared is a JSON 503 with
`Retry-After`.

Every answer carries `X-Request-ID` (the caller's, when it is sane, else a new one) and `X-Gateway-Time-Ms`: the
time spent in the gateway, i.e. the total minus the time spent awaiting providers. (For a stream, the time until
the response starts; the `done` event carries the final figure.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.db import DatabaseError
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from aditus.logging import current_request_id, request_id_from_header
from providers.clients.base import GenerateRequest
from runtime.db import is_unavailable
from tasks import inputs, prompts, sse
from tasks.images import image_input
from tasks.prompts import TaskSpec
from tasks.responses import TaskError, cost_text, json_response, usage_dict
from tasks.router import Router, Served, TaskCall
from tasks.services import request_prepare

# Per task: read the input, turn it into a provider request (and whether to stream), and shape the result.
InputReader = Callable[[Any], Any]
RequestBuilder = Callable[[Any], tuple[GenerateRequest, bool]]
ResultShaper = Callable[[Served, Any], Any]

logger = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = TaskError(
    503,
    "database_unavailable",
    "The database cannot be reached just now, so the call could not be made; try again shortly.",
    headers={"Retry-After": "2"},
)


def _request_id(request) -> str:
    # The id RequestIdMiddleware gave the request (so log lines and usage rows agree), else the same rule here.
    return current_request_id() or request_id_from_header(request.META.get("HTTP_X_REQUEST_ID"))


def _provider(served: Served) -> dict[str, Any]:
    candidate = served.candidate
    return {
        "type": candidate.provider_type.value,
        "config_id": candidate.config_id,
        "name": candidate.name,
        "model": served.result.model,
    }


def _error_response(call: TaskCall, error: TaskError) -> HttpResponse:
    return json_response(
        {"error": error.as_dict(), "attempts": call.attempts, "request_id": call.request_id},
        status=error.status,
        headers=error.headers,
    )


async def _handle(
    request, spec: TaskSpec, read_input: InputReader, build: RequestBuilder, shape: ResultShaper
) -> HttpResponse:
    call = TaskCall(
        task=spec.task,
        request_id=_request_id(request),
        started=time.perf_counter(),
        after_response=getattr(request, "after_response", None),  # set by runtime.asgi
    )
    try:
        if request.method != "POST":
            raise TaskError(405, "method_not_allowed", "Use POST.", headers={"Allow": "POST"})
        prepared = await request_prepare(
            request=request, task=spec.task, request_id=call.request_id, read_input=read_input, build=build
        )
        call.user_id = prepared.user_id
        router = Router.for_task(call, spec, prepared)
        if prepared.stream:
            opened = await router.open_stream(prepared.provider_request)
            if isinstance(request, ASGIRequest):
                response = sse.EventStreamResponse(sse.EventStream(call, opened))
            else:  # under WSGI the stream cannot outlive this view's event loop
                response = await sse.buffered_response(sse.EventStream(call, opened))
        else:
            served = await router.generate(prepared.provider_request, spec.output)
            record = served.record
            response = json_response(
                {
                    "result": shape(served, prepared.input),
                    "provider": _provider(served),
                    "usage": usage_dict(served.result.usage),
                    "cost_usd": cost_text(record.cost_usd),
                    "priced": record.priced,
                    "attempts": call.attempts,
                    "request_id": call.request_id,
                }
            )
    except DatabaseError as error:
        if not is_unavailable(error):
            raise
        # Preparing, or reserving for a fallback: no provider call was made for what failed.
        logger.warning("The database is unavailable; answering 503", exc_info=True)
        response = _error_response(call, DATABASE_UNAVAILABLE)
    except TaskError as error:
        response = _error_response(call, error)
    response["X-Request-ID"] = call.request_id
    response["X-Gateway-Time-Ms"] = f"{call.gateway_ms():.3f}"
    return response


def _extraction_request(value: inputs.ExtractionInput) -> tuple[GenerateRequest, bool]:
    return prompts.EXTRACTION.request(prompts.extraction_text(text=value.text, source_url=value.source_url)), False


def _image_request(image) -> tuple[GenerateRequest, bool]:
    return prompts.IMAGE_VALIDATION.request(prompts.IMAGE_VALIDATION_TEXT, image=image), False


def _cv_request(value: inputs.WritingInput) -> tuple[GenerateRequest, bool]:
    text = prompts.cv_draft_text(profile=value.profile, job=value.job, language=value.language)
    return prompts.CV_DRAFTING.request(text), value.stream


def _letter_request(value: inputs.WritingInput) -> tuple[GenerateRequest, bool]:
    text = prompts.cover_letter_text(profile=value.profile, job=value.job, tone=value.tone, language=value.language)
    return prompts.COVER_LETTER.request(text), value.stream


def _structured(served: Served, value: Any) -> Any:
    return served.value


def _markdown(served: Served, value: inputs.WritingInput) -> dict[str, Any]:
    return {"markdown": served.value}


def _letter(served: Served, value: inputs.WritingInput) -> dict[str, Any]:
    return {"text": served.value, "tone": value.tone, "language": value.language}


@csrf_exempt  # bearer-token clients need no CSRF token; session requests are checked in session_user()
async def job_extract(request) -> HttpResponse:
    """POST {"text", "source_url"?} -> the job posting as structured data."""
    return await _handle(request, prompts.EXTRACTION, inputs.extraction_input, _extraction_request, _structured)


@csrf_exempt
async def job_image_validate(request) -> HttpResponse:
    """POST multipart `image` -> {"is_job_posting", "confidence", "reason", "extracted_text"}."""
    return await _handle(request, prompts.IMAGE_VALIDATION, image_input, _image_request, _structured)


@csrf_exempt
async def cv_draft(request) -> HttpResponse:
    """POST {"profile", "job", "language"?, "stream"?} -> {"markdown"} (or Server-Sent Events)."""
    return await _handle(request, prompts.CV_DRAFTING, inputs.cv_draft_input, _cv_request, _markdown)


@csrf_exempt
async def cover_letter_generate(request) -> HttpResponse:
    """POST {"profile", "job", "tone"?, "language"?, "stream"?} -> {"text", "tone", "language"} (or SSE)."""
    return await _handle(request, prompts.COVER_LETTER, inputs.cover_letter_input, _letter_request, _letter)
