"""OpenAI through the official `openai` SDK (Chat Completions).

SDK objects come from `PooledSdkClient` (see there): the connections are shared, the key is sent per call and
lives only as long as the call; the SDK's retries are off.

A plain (not streamed) call goes through the SDK's own `post` with the request body as built here and the raw
response back, read with `json.loads`: the SDK still makes the request (URL, headers, key, timeouts) and raises
its errors, but skips re-walking the parameters against their TypedDicts and building pydantic models of the
answer, which together cost about 0.6 ms of CPU per call, a fifth of the gateway's budget. Our parameters need
no transformation (plain strings, numbers and dicts), and the answer is checked field by field here anyway.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletionChunk

from .base import (
    DONE,
    AsyncProviderStream,
    BadRequestError,
    Endpoint,
    GenerateRequest,
    GenerateResult,
    MalformedResponseError,
    ProviderError,
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

NAME = "OpenAI"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def build_params(endpoint: Endpoint, request: GenerateRequest) -> dict[str, Any]:
    """The `chat.completions.create` arguments for `request` (without streaming options)."""
    content: str | list[dict[str, Any]] = request.user_text
    if request.image is not None:
        data = base64.b64encode(request.image.data).decode("ascii")
        content = [
            {"type": "text", "text": request.user_text},
            {"type": "image_url", "image_url": {"url": f"data:{request.image.mime_type};base64,{data}"}},
        ]
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": content})
    # `max_completion_tokens`, not the deprecated `max_tokens` that reasoning models refuse.
    params: dict[str, Any] = {
        "model": endpoint.model,
        "messages": messages,
        "max_completion_tokens": request.max_output_tokens,
    }
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.json_schema is not None:
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": True},
        }
    return params


def usage_from_raw(raw: Mapping[str, Any]) -> TokenUsage:
    """Normalise OpenAI's usage object: `prompt_tokens` already holds the cached tokens and
    `completion_tokens` the reasoning tokens."""
    try:
        prompt = raw.get("prompt_tokens_details") or {}
        completion = raw.get("completion_tokens_details") or {}
        return TokenUsage(
            input_tokens=int(raw["prompt_tokens"]),
            output_tokens=int(raw["completion_tokens"]),
            cached_input_tokens=int(prompt.get("cached_tokens") or 0),
            cache_write_tokens=int(prompt.get("cache_write_tokens") or 0),
            reasoning_tokens=int(completion.get("reasoning_tokens") or 0),
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


COMPLETIONS_PATH = "/chat/completions"


@functools.lru_cache(maxsize=256)
def _completions_url(base_url: str) -> str:
    """The absolute URL of chat completions under `base_url`, as the SDK joins it. Given a path, the SDK parses
    the base URL again on every call to join them (~20 us of CPU); given the absolute URL, it parses that once."""
    return base_url.rstrip("/") + COMPLETIONS_PATH


def result_from_response(response: httpx2.Response, request: GenerateRequest) -> GenerateResult:
    """The result of a chat completion from its raw (2xx) response."""
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise MalformedResponseError(f"{NAME}: unreadable response ({type(exc).__name__})") from None
    if not isinstance(body, Mapping):
        raise MalformedResponseError(f"{NAME}: the response body is not a chat completion")
    try:
        choice = body["choices"][0]
        message = choice["message"]
        text = message.get("content")
        finish_reason = choice.get("finish_reason")
        if text is None:
            # A refusal comes instead of content (with structured outputs, instead of the JSON).
            text, finish_reason = "", "refusal" if message.get("refusal") else finish_reason
        usage = body.get("usage")
        if usage is None:
            raise MalformedResponseError(f"{NAME}: the response has no usage")
        if not isinstance(usage, Mapping):
            raise TypeError("usage is not an object")
        result = GenerateResult(
            text=str(text), model=str(body["model"]), finish_reason=finish_reason, usage=usage_from_raw(usage)
        )
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise MalformedResponseError(f"{NAME}: incomplete chat completion ({type(exc).__name__})") from None
    check_json(result.text, request)
    return result


def _body_error(body: object) -> tuple[str, str]:
    """The provider's error type (or code) and message from an error body."""
    if isinstance(body, Mapping):
        kind = body.get("code") or body.get("type") or ""
        return str(kind), str(body.get("message") or "")
    return "", ""


def map_error(exc: Exception, *, api_key: str, midstream: bool = False) -> ProviderError | None:
    """Turn an SDK or transport exception into a `ProviderError`; None for anything else (a bug: re-raise)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        kind, message = _body_error(exc.body)
        retry = parse_retry_after(exc.response.headers) if exc.status_code == 429 else None
        return status_error(NAME, exc.status_code, kind=kind, message=message, api_key=api_key, retry_after=retry)
    error = transport_error(NAME, exc, api_key=api_key, midstream=midstream, sdk=openai)
    if error is not None:
        return error
    if isinstance(exc, openai.APIError):
        # An error event inside a 200 stream: no status, the body says what went wrong.
        kind, message = _body_error(exc.body)
        error_class = RateLimitedError if "rate_limit" in kind else ProviderUnavailableError
        if kind == "invalid_request_error":
            error_class = BadRequestError
        return provider_error(NAME, error_class, status=None, detail=f"{kind}: {message}", api_key=api_key)
    return local_error(NAME, exc, midstream=midstream) or unreadable_error(NAME, exc, api_key=api_key)


class OpenAIClient(PooledSdkClient):
    provider_type = ProviderType.OPENAI
    name = NAME
    default_base_url = DEFAULT_BASE_URL
    sdk_class = openai.OpenAI
    async_sdk_class = openai.AsyncOpenAI

    async def agenerate(self, endpoint: Endpoint, request: GenerateRequest, *, api_key: str) -> GenerateResult:
        def errors(exc: Exception) -> ProviderError | None:
            return map_error(exc, api_key=api_key)

        sdk, key_headers = self._async_sdk(endpoint, api_key)
        body = built_locally(NAME, build_params, endpoint, request)
        url = _completions_url(str(sdk.base_url))
        response = await acall_mapped(
            errors, sdk.post(url, body=body, cast_to=httpx2.Response, options={"headers": key_headers})
        )
        return result_from_response(response, request)

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
        params = built_locally(NAME, build_params, endpoint, request)
        stream = await acall_mapped(
            errors,
            sdk.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True}, extra_headers=key_headers
            ),
        )
        try:
            while (chunk := await anext_mapped(midstream_errors, stream)) is not DONE:
                if (text := _absorb(chunk, state)) is not None:
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


def _absorb(chunk: Any, state: StreamState) -> str | None:
    """Record one stream chunk in `state`; return its text, if any."""
    if not isinstance(chunk, ChatCompletionChunk):
        raise MalformedResponseError(f"{NAME}: a stream event is not a chat completion chunk")
    try:
        if chunk.model:
            state.model = chunk.model
        if chunk.usage is not None:
            state.usage = usage_from_raw(chunk.usage.to_dict())
        text = None
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            if choice.finish_reason:
                state.finish_reason = choice.finish_reason
            if choice.delta is not None and choice.delta.content:
                text = choice.delta.content
                state.text_parts.append(text)
        return text
    except (AttributeError, TypeError) as exc:
        raise MalformedResponseError(f"{NAME}: incomplete stream chunk ({type(exc).__name__})") from None


def _finish(state: StreamState, request: GenerateRequest) -> GenerateResult:
    if state.usage is None:
        raise MalformedResponseError(f"{NAME}: the stream ended without usage")
    result = GenerateResult(text=state.text(), model=state.model, finish_reason=state.finish_reason, usage=state.usage)
    check_json(result.text, request)
    state.result = result
    return result
