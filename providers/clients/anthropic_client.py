"""Anthropic Claude through the official `anthropic` SDK (Messages API).

SDK objects come from `PooledSdkClient` (see there): the connections are shared, the key is sent per call and
lives only as long as the call; the SDK's retries are off. Structured output uses the Messages
API's native `output_config.format` (`json_schema`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anthropic
from anthropic.types import Message

from .base import (
    DONE,
    AsyncProviderStream,
    AuthenticationError,
    BadRequestError,
    Endpoint,
    GenerateRequest,
    GenerateResult,
    MalformedResponseError,
    ModelNotFoundError,
    PermissionDeniedError,
    ProviderError,
    ProviderTimeoutError,
    ProviderType,
    ProviderUnavailableError,
    RateLimitedError,
    StreamEnd,
    StreamEvent,
    StreamState,
    TextDelta,
    TokenUsage,
    acall_mapped,
    anext_mapped,
    built_locally,
    call_mapped,
    local_error,
    parse_retry_after,
    provider_error,
    status_error,
    transport_error,
    unreadable_error,
)
from .pool import PooledSdkClient

NAME = "Anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"

# Error types Anthropic sends in an `error` event inside a 200 stream, where the status says nothing.
_STREAM_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "invalid_request_error": BadRequestError,
    "request_too_large": BadRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "not_found_error": ModelNotFoundError,
    "rate_limit_error": RateLimitedError,
    "timeout_error": ProviderTimeoutError,
    "api_error": ProviderUnavailableError,
    "overloaded_error": ProviderUnavailableError,
}


def build_params(endpoint: Endpoint, request: GenerateRequest) -> dict[str, Any]:
    """The `messages.create` arguments for `request` (without `stream`)."""
    content: str | list[dict[str, Any]] = request.user_text
    if request.image is not None:
        # Image first: Anthropic's advice for one image and a question about it.
        data = base64.b64encode(request.image.data).decode("ascii")
        content = [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": request.image.mime_type, "data": data},
            },
            {"type": "text", "text": request.user_text},
        ]
    params: dict[str, Any] = {
        "model": endpoint.model,
        "max_tokens": request.max_output_tokens,
        "messages": [{"role": "user", "content": content}],
    }
    if request.system:
        params["system"] = request.system
    if request.temperature is not None:
        # anthropic 2.x dropped the sampling parameters from `messages.create`; the API still takes them.
        params["extra_body"] = {"temperature": request.temperature}
    if request.json_schema is not None:
        params["output_config"] = {"format": {"type": "json_schema", "schema": request.json_schema}}
    return params


def usage_from_raw(raw: Mapping[str, Any]) -> TokenUsage:
    """Normalise Anthropic's usage object: `input_tokens` excludes the cache reads and writes, so add them."""
    try:
        cache_read = int(raw.get("cache_read_input_tokens") or 0)
        cache_write = int(raw.get("cache_creation_input_tokens") or 0)
        details = raw.get("output_tokens_details") or {}
        return TokenUsage(
            input_tokens=int(raw["input_tokens"]) + cache_read + cache_write,
            output_tokens=int(raw["output_tokens"]),
            cached_input_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=int(details.get("thinking_tokens") or 0),
            raw=dict(raw),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedResponseError(f"{NAME}: usage without token counts ({type(exc).__name__})") from None


def check_json(text: str, request: GenerateRequest) -> None:
    if request.json_schema is None:
        return
    try:
        json.loads(text)
    except ValueError:
        raise MalformedResponseError(f"{NAME}: structured output is not valid JSON") from None


def result_from_message(message: Any, request: GenerateRequest) -> GenerateResult:
    if not isinstance(message, Message):
        raise MalformedResponseError(f"{NAME}: the response body is not a message")
    try:
        text = "".join(block.text for block in message.content if block.type == "text")
        result = GenerateResult(
            text=text,
            model=str(message.model),
            finish_reason=message.stop_reason,
            usage=usage_from_raw(message.usage.to_dict()),
        )
    except (AttributeError, TypeError) as exc:
        raise MalformedResponseError(f"{NAME}: incomplete message ({type(exc).__name__})") from None
    check_json(result.text, request)
    return result


def map_error(exc: Exception, *, api_key: str, midstream: bool = False) -> ProviderError | None:
    """Turn an SDK or transport exception into a `ProviderError`; None for anything else (a bug: re-raise)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, anthropic.APIStatusError):
        kind = exc.type or ""
        message = exc.api_message or ""
        if exc.status_code == 200:
            # An `error` event inside a streamed 200 answer.
            error_class = _STREAM_ERROR_TYPES.get(kind, ProviderUnavailableError)
            return provider_error(NAME, error_class, status=None, detail=f"{kind}: {message}", api_key=api_key)
        retry = parse_retry_after(exc.response.headers) if exc.status_code == 429 else None
        return status_error(NAME, exc.status_code, kind=kind, message=message, api_key=api_key, retry_after=retry)
    error = transport_error(NAME, exc, api_key=api_key, midstream=midstream, sdk=anthropic)
    if error is not None:
        return error
    return local_error(NAME, exc, midstream=midstream) or unreadable_error(NAME, exc, api_key=api_key)


class AnthropicClient(PooledSdkClient):
    provider_type = ProviderType.CLAUDE
    name = NAME
    default_base_url = DEFAULT_BASE_URL
    sdk_class = anthropic.Anthropic
    async_sdk_class = anthropic.AsyncAnthropic

    async def agenerate(self, endpoint: Endpoint, request: GenerateRequest, *, api_key: str) -> GenerateResult:
        def errors(exc: Exception) -> ProviderError | None:
            return map_error(exc, api_key=api_key)

        sdk, key_headers = self._async_sdk(endpoint, api_key)
        message = await acall_mapped(
            errors,
            sdk.messages.create(**built_locally(NAME, build_params, endpoint, request), extra_headers=key_headers),
        )
        return result_from_message(message, request)

    def astream(self, endpoint: Endpoint, request: GenerateRequest, *, api_key: str) -> AsyncProviderStream:
        state = StreamState(model=endpoint.model, request=request)
        return AsyncProviderStream(self._aevents(endpoint, request, api_key, state), state)

    async def _aevents(
        self, endpoint: Endpoint, request: GenerateRequest, api_key: str, state: StreamState
    ) -> AsyncGenerator[StreamEvent, None]:
        def errors(exc: Exception) -> ProviderError | None:
            return map_error(exc, api_key=api_key)

        def midstream_errors(exc: Exception) -> ProviderError | None:
            return map_error(exc, api_key=api_key, midstream=True)

        sdk, key_headers = self._async_sdk(endpoint, api_key)
        stream = await acall_mapped(
            errors,
            sdk.messages.create(
                **built_locally(NAME, build_params, endpoint, request), stream=True, extra_headers=key_headers
            ),
        )
        usage: dict[str, Any] = {}
        try:
            while (event := await anext_mapped(midstream_errors, stream)) is not DONE:
                if (text := _absorb(event, state, usage)) is not None:
                    yield TextDelta(text)
        finally:
            await stream.close()
        yield StreamEnd(_finish(state, request))

    def check_credentials(self, endpoint: Endpoint, *, api_key: str) -> str:
        def errors(exc: Exception) -> ProviderError | None:
            return map_error(exc, api_key=api_key)

        model = call_mapped(errors, self._sdk(endpoint, api_key).models.retrieve, endpoint.model)
        model_id = getattr(model, "id", None)
        if not isinstance(model_id, str) or not model_id:
            raise MalformedResponseError(f"{NAME}: the model object has no id")
        return model_id


def _absorb(event: Any, state: StreamState, usage: dict[str, Any]) -> str | None:
    """Record one stream event in `state`; return its text, if any.

    `message_start` carries the input side of the usage; each `message_delta` carries the running output
    count (and, lately, the input counts again), so `usage` merges them, later values winning.
    """
    try:
        kind = event.type
        if kind == "content_block_delta":
            if event.delta.type == "text_delta" and event.delta.text:
                state.text_parts.append(event.delta.text)
                return event.delta.text
        elif kind == "message_start":
            state.model = str(event.message.model)
            usage.update(event.message.usage.to_dict())
            state.usage = usage_from_raw(usage)
        elif kind == "message_delta":
            usage.update({name: value for name, value in event.usage.to_dict().items() if value is not None})
            state.usage = usage_from_raw(usage)
            if event.delta.stop_reason:
                state.finish_reason = event.delta.stop_reason
        return None
    except AttributeError as exc:
        raise MalformedResponseError(f"{NAME}: incomplete stream event ({type(exc).__name__})") from None


def _finish(state: StreamState, request: GenerateRequest) -> GenerateResult:
    if state.usage is None or state.finish_reason is None:
        raise MalformedResponseError(f"{NAME}: the stream ended before its final message_delta")
    result = GenerateResult(text=state.text(), model=state.model, finish_reason=state.finish_reason, usage=state.usage)
    check_json(result.text, request)
    state.result = result
    return result
