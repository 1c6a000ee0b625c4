"""Google Gemini through the official `google-genai` SDK (Gemini Developer API).

A `genai.Client` is built for each call (~110 µs, given the shared SSL context; ~20 ms without it) on the
shared connection pool, so the key lives only as long as the call. `retry_options` with one attempt turns
the SDK's retries off. Structured output uses `response_mime_type="application/json"` with
`response_json_schema`.

The SDK closes the HTTP response of a stream that is abandoned early only when the garbage collector finalises
its inner generators, so the pool's response hook hands each stream the responses it opened and the stream
closes them itself.
"""

from __future__ import annotations

import contextvars
import json
import re
import threading
from collections.abc import AsyncGenerator, Mapping
from enum import Enum
from typing import Any

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from .base import (
    DONE,
    AsyncProviderStream,
    AuthenticationError,
    Endpoint,
    GenerateRequest,
    GenerateResult,
    MalformedResponseError,
    PermissionDeniedError,
    ProviderError,
    ProviderType,
    StreamEnd,
    StreamEvent,
    StreamState,
    TextDelta,
    TokenUsage,
    acall_mapped,
    anext_mapped,
    built_locally,
    call_mapped,
    error_class_for_status,
    local_error,
    parse_retry_after,
    require_key,
    status_error,
    transport_error,
    unreadable_error,
)
from .pool import HttpPool, ssl_context

NAME = "Gemini"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
# google-genai 3.6 defaults to `v1`; `responseJsonSchema` and thinking are `v1beta` features.
API_VERSION = "v1beta"

_stream_responses: contextvars.ContextVar[list[httpx2.Response] | None] = contextvars.ContextVar(
    "gemini_stream_responses", default=None
)


async def _remember_response(response: httpx2.Response) -> None:
    responses = _stream_responses.get()
    if responses is not None:
        responses.append(response)


def build_contents_and_config(request: GenerateRequest) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The `generate_content` contents and config for `request` (without HTTP options)."""
    parts: list[dict[str, Any]] = []
    if request.image is not None:
        # Image first: Google's advice for one image and a question about it.
        parts.append({"inline_data": {"data": request.image.data, "mime_type": request.image.mime_type}})
    parts.append({"text": request.user_text})
    config: dict[str, Any] = {
        "max_output_tokens": request.max_output_tokens,
        # One request per call: no follow-up requests for continuation tokens or function calls.
        "automatic_continuation": False,
        "automatic_function_calling": {"disable": True},
    }
    if request.system:
        config["system_instruction"] = request.system
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.json_schema is not None:
        config["response_mime_type"] = "application/json"
        config["response_json_schema"] = request.json_schema
    return [{"role": "user", "parts": parts}], config


def usage_from_raw(raw: Mapping[str, Any]) -> TokenUsage:
    """Normalise Gemini's `usageMetadata` (wire names): `promptTokenCount` includes the cached tokens, but
    `candidatesTokenCount` excludes the thinking tokens (`thoughtsTokenCount`), so add them."""
    try:
        thoughts = int(raw.get("thoughtsTokenCount") or 0)
        return TokenUsage(
            input_tokens=int(raw["promptTokenCount"]) + int(raw.get("toolUsePromptTokenCount") or 0),
            output_tokens=int(raw.get("candidatesTokenCount") or 0) + thoughts,
            cached_input_tokens=int(raw.get("cachedContentTokenCount") or 0),
            reasoning_tokens=thoughts,
            raw=dict(raw),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponseError(f"{NAME}: usage without token counts ({type(exc).__name__})") from None


def _raw_usage(metadata: Any) -> dict[str, Any]:
    # The SDK's model, dumped back under the wire names.
    return metadata.model_dump(mode="json", by_alias=True, exclude_none=True)


def check_json(text: str, request: GenerateRequest) -> None:
    if request.json_schema is None:
        return
    try:
        json.loads(text)
    except ValueError:
        raise MalformedResponseError(f"{NAME}: structured output is not valid JSON") from None


def _enum_value(value: Any) -> str | None:
    if value is None:
        return None
    return str(value.value if isinstance(value, Enum) else value)


def _read_chunk(response: Any) -> tuple[str, str | None]:
    """The visible text (thought summaries left out) and finish reason of a response or stream chunk."""
    if not isinstance(response, types.GenerateContentResponse):
        raise MalformedResponseError(f"{NAME}: the response body is not a GenerateContentResponse")
    if not response.candidates:
        feedback = response.prompt_feedback
        return "", _enum_value(feedback.block_reason) if feedback is not None else None
    candidate = response.candidates[0]
    parts = candidate.content.parts if candidate.content is not None else None
    text = "".join(part.text for part in parts or () if part.text and not part.thought)
    return text, _enum_value(candidate.finish_reason)


def result_from_response(response: Any, request: GenerateRequest, model: str) -> GenerateResult:
    try:
        text, finish_reason = _read_chunk(response)
        if response.usage_metadata is None:
            raise MalformedResponseError(f"{NAME}: the response has no usageMetadata")
        result = GenerateResult(
            text=text,
            model=response.model_version or model,
            finish_reason=finish_reason,
            usage=usage_from_raw(_raw_usage(response.usage_metadata)),
        )
    except (AttributeError, TypeError) as exc:
        raise MalformedResponseError(f"{NAME}: incomplete response ({type(exc).__name__})") from None
    check_json(result.text, request)
    return result


_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _error_details(body: Any) -> list[Mapping[str, Any]]:
    error = body.get("error", body) if isinstance(body, Mapping) else None
    details = error.get("details") if isinstance(error, Mapping) else None
    return [detail for detail in details or () if isinstance(detail, Mapping)]


def _retry_after(exc: genai_errors.APIError) -> float | None:
    headers = getattr(exc.response, "headers", None)
    seconds = parse_retry_after(headers) if isinstance(headers, Mapping) else None
    if seconds is None:
        # Gemini says when to come back in a google.rpc.RetryInfo detail: {"retryDelay": "20s"}.
        for detail in _error_details(exc.details):
            match = _SECONDS.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return seconds


def map_error(exc: Exception, *, api_key: str, midstream: bool = False) -> ProviderError | None:
    """Turn an SDK or transport exception into a `ProviderError`; None for anything else (a bug: re-raise)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        status = exc.code if isinstance(exc.code, int) else None
        kind = str(exc.status or "")
        message = str(exc.message or "")
        error_class = error_class_for_status(status)
        reasons = {str(detail.get("reason")) for detail in _error_details(exc.details)}
        if status == 400 and "API_KEY_INVALID" in reasons:
            # Gemini answers a bad key with 400 INVALID_ARGUMENT, not 401.
            error_class = AuthenticationError
        elif status == 400 and kind == "FAILED_PRECONDITION":
            # The account, not the request: billing, or a region the free tier does not serve.
            error_class = PermissionDeniedError
        return status_error(
            NAME,
            status,
            kind=kind,
            message=message,
            api_key=api_key,
            retry_after=_retry_after(exc) if status == 429 else None,
            error_class=error_class,
        )
    error = transport_error(NAME, exc, api_key=api_key, midstream=midstream)
    if error is not None:
        return error
    # Bodies that are not JSON (UnknownApiResponseError, json.JSONDecodeError) or not the expected shape.
    return local_error(NAME, exc, midstream=midstream) or unreadable_error(NAME, exc, api_key=api_key)


class GeminiClient:
    """Gemini behind the gateway's interface. A pool passed in needs this module's response hooks, or
    streams abandoned early are left to the garbage collector to close."""

    provider_type = ProviderType.GEMINI

    def __init__(self, pool: HttpPool | None = None):
        self.pool = pool or HttpPool(async_event_hooks={"response": [_remember_response]})
        self._idle_async: httpx2.AsyncClient | None = None
        self._lock = threading.Lock()

    def _idle_async_client(self) -> httpx2.AsyncClient:
        # A genai.Client builds its own async pool (with its own SSL context, ~20 ms) unless it is given one.
        # The sync clients made for credential checks never use it, so they all share this one, which sends nothing.
        if self._idle_async is None:
            with self._lock:
                if self._idle_async is None:
                    self._idle_async = httpx2.AsyncClient(verify=ssl_context())
        return self._idle_async

    def _sdk(self, endpoint: Endpoint, api_key: str, *, for_async: bool = False) -> genai.Client:
        require_key(NAME, api_key)
        base_url = endpoint.base_url or DEFAULT_BASE_URL
        http_options = types.HttpOptions(
            base_url=base_url,
            api_version=API_VERSION,
            headers=dict(endpoint.extra_headers) or None,
            timeout=round(endpoint.timeout * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_client=self.pool.client(base_url),
            httpx_async_client=self.pool.async_client(base_url) if for_async else self._idle_async_client(),
            # Only its `ssl` is read (for websockets), and giving it saves building another SSL context.
            async_client_args={"ssl": ssl_context()},
        )
        return genai.Client(api_key=api_key, vertexai=False, http_options=http_options)

    async def agenerate(self, endpoint: Endpoint, request: GenerateRequest, *, api_key: str) -> GenerateResult:
        def errors(exc: Exception) -> ProviderError | None:
            return map_error(exc, api_key=api_key)

        models = self._sdk(endpoint, api_key, for_async=True).aio.models
        contents, config = built_locally(NAME, build_contents_and_config, request)
        response = await acall_mapped(
            errors, models.generate_content(model=endpoint.model, contents=contents, config=config)
        )
        return result_from_response(response, request, endpoint.model)

    def astream(self, endpoint: Endpoint, request: GenerateRequest, *, api_key: str) -> AsyncProviderStream:
        state = StreamState(model=endpoint.model, request=request)
        return AsyncProviderStream(self._aevents(endpoint, request, api_key, state), state)

    async def _aevents(
        self, endpoint: Endpoint, request: GenerateRequest, api_key: str, state: StreamState
    ) -> AsyncGenerator[StreamEvent, None]:
        def errors(exc: Exception) -> ProviderError | None:
            return map_error(exc, api_key=api_key, midstream=bool(state.text_parts))

        models = self._sdk(endpoint, api_key, for_async=True).aio.models
        contents, config = built_locally(NAME, build_contents_and_config, request)
        responses: list[httpx2.Response] = []
        # The hook sees this variable only while it is set here, so it is set and reset around each step, the
        # one that sends the request and each that reads a chunk.
        token = _stream_responses.set(responses)
        try:
            chunks = await acall_mapped(
                errors, models.generate_content_stream(model=endpoint.model, contents=contents, config=config)
            )
        finally:
            _stream_responses.reset(token)
        try:
            while True:
                token = _stream_responses.set(responses)
                try:
                    chunk = await anext_mapped(errors, chunks)
                finally:
                    _stream_responses.reset(token)
                if chunk is DONE:
                    break
                if (text := _absorb(chunk, state)) is not None:
                    yield TextDelta(text)
        finally:
            try:
                await chunks.aclose()
            finally:
                for response in responses:
                    await response.aclose()
        yield StreamEnd(_finish(state, request))

    def check_credentials(self, endpoint: Endpoint, *, api_key: str) -> str:
        def errors(exc: Exception) -> ProviderError | None:
            return map_error(exc, api_key=api_key)

        models = self._sdk(endpoint, api_key).models
        model = call_mapped(errors, models.get, model=endpoint.model)
        name = getattr(model, "name", None)
        if not isinstance(name, str) or not name:
            raise MalformedResponseError(f"{NAME}: the model object has no name")
        return name.removeprefix("models/")


def _absorb(chunk: Any, state: StreamState) -> str | None:
    """Record one stream chunk in `state`; return its visible text, if any.

    Every chunk carries the usage so far; the last one carries the final counts.
    """
    try:
        text, finish_reason = _read_chunk(chunk)
        if chunk.model_version:
            state.model = chunk.model_version
        if finish_reason:
            state.finish_reason = finish_reason
        if chunk.usage_metadata is not None:
            state.usage = usage_from_raw(_raw_usage(chunk.usage_metadata))
    except (AttributeError, TypeError) as exc:
        raise MalformedResponseError(f"{NAME}: incomplete stream chunk ({type(exc).__name__})") from None
    if text:
        state.text_parts.append(text)
        return text
    return None


def _finish(state: StreamState, request: GenerateRequest) -> GenerateResult:
    if state.usage is None:
        raise MalformedResponseError(f"{NAME}: the stream ended without usageMetadata")
    result = GenerateResult(text=state.text(), model=state.model, finish_reason=state.finish_reason, usage=state.usage)
    check_json(result.text, request)
    state.result = result
    return result
