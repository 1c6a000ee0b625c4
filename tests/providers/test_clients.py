"""The provider clients, through the real SDKs, against the fake provider servers and recorded wire bodies.

Expected token counts follow the fake's documented formula (providers/fake/generation.py): ceil(len / 4) per
text part, a fixed cost per image, thinking models report thoughts = 2 x visible output.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from providers.clients import get_client
from providers.clients.anthropic_client import AnthropicClient
from providers.clients.anthropic_client import usage_from_raw as anthropic_usage
from providers.clients.base import (
    AsyncProviderStream,
    AuthenticationError,
    BadRequestError,
    ClientSideError,
    Endpoint,
    ErrorType,
    GenerateRequest,
    GenerateResult,
    ImageInput,
    MalformedResponseError,
    ModelNotFoundError,
    PermissionDeniedError,
    ProviderError,
    ProviderTimeoutError,
    ProviderType,
    ProviderUnavailableError,
    ProviderUnreachableError,
    RateLimitedError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TokenUsage,
    scrub_secret,
)
from providers.clients.gemini_client import GeminiClient
from providers.clients.gemini_client import usage_from_raw as gemini_usage
from providers.clients.openai_client import OpenAIClient
from providers.clients.openai_client import usage_from_raw as openai_usage
from providers.clients.pool import HttpPool

WIRE = Path("/work/shared/wire")
SYSTEM = "You are terse."
PROMPT = "Name a colour."
REQUEST = GenerateRequest(system=SYSTEM, user_text=PROMPT, max_output_tokens=200)
# A 1x1 PNG, the one in the recorded OpenAI image request.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"type": "string"},
        "count": {"type": "integer", "minimum": 2},
        "warm": {"type": "boolean"},
    },
    "required": ["colour", "count", "warm"],
    "additionalProperties": False,
}
# What the fake fills SCHEMA with (providers/fake/schema_instance.py).
SCHEMA_INSTANCE = {"colour": "fake colour", "count": 2, "warm": True}


@dataclasses.dataclass(frozen=True)
class Case:
    type: ProviderType
    client_class: type
    model: str
    answered_model: str  # the model id the provider reports back
    key: str
    url_attribute: str
    image_tokens: int
    thinking: bool
    stop: str
    bad_key_status: int
    raw_input_field: str

    def base_url(self, fake: Any) -> str:
        return getattr(fake, self.url_attribute)

    def endpoint(self, fake: Any, **options: Any) -> Endpoint:
        return Endpoint(self.type, options.pop("model", self.model), base_url=self.base_url(fake), **options)


CASES = [
    Case(
        type=ProviderType.OPENAI,
        client_class=OpenAIClient,
        model="gpt-4o-mini",
        answered_model="gpt-4o-mini-2024-07-18",
        key="sk-test-Zq8XfW3kP0sLm2Nb",
        url_attribute="openai_base_url",
        image_tokens=85,
        thinking=False,
        stop="stop",
        bad_key_status=401,
        raw_input_field="prompt_tokens",
    ),
    Case(
        type=ProviderType.CLAUDE,
        client_class=AnthropicClient,
        model="claude-haiku-4-5",
        answered_model="claude-haiku-4-5-20251001",
        key="sk-ant-test-Zq8XfW3kP0sLm2Nb",
        url_attribute="anthropic_base_url",
        image_tokens=1,  # ceil(len(base64) / 1000) for the tiny PNG
        thinking=False,
        stop="end_turn",
        bad_key_status=401,
        raw_input_field="input_tokens",
    ),
    Case(
        type=ProviderType.GEMINI,
        client_class=GeminiClient,
        model="gemini-2.5-flash",
        answered_model="gemini-2.5-flash",
        key="AIzaSy-test-Zq8XfW3kP0sLm2Nb",
        url_attribute="gemini_base_url",
        image_tokens=258,
        thinking=True,
        stop="STOP",
        bad_key_status=400,  # 400 INVALID_ARGUMENT with reason API_KEY_INVALID
        raw_input_field="promptTokenCount",
    ),
]


@pytest.fixture(params=CASES, ids=lambda case: case.type.value)
def case(request) -> Case:
    return request.param


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def reply(case: Case, images: int = 0) -> str:
    return f'Fake reply from {case.model} to "{PROMPT}".' + (" I saw 1 image." if images else "")


def expected_usage(case: Case, output_text: str, *, images: int = 0, cached: int = 0) -> TokenUsage:
    visible = tokens(output_text)
    reasoning = 2 * visible if case.thinking else 0
    return TokenUsage(
        input_tokens=tokens(SYSTEM) + tokens(PROMPT) + images * case.image_tokens,
        output_tokens=visible + reasoning,
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
    )


def generate(case: Case, endpoint: Endpoint, request: GenerateRequest, key: str | None = None) -> GenerateResult:
    client = get_client(case.type)
    return asyncio.run(client.agenerate(endpoint, request, api_key=case.key if key is None else key))


def stream_events(
    case: Case, endpoint: Endpoint, request: GenerateRequest, key: str | None = None
) -> list[StreamEvent]:
    client = get_client(case.type)
    return events_of(client.astream(endpoint, request, api_key=case.key if key is None else key))


def events_of(stream: AsyncProviderStream) -> list[StreamEvent]:
    """Every event of `stream`, consumed on an event loop of its own."""

    async def collect():
        return [event async for event in stream]

    return asyncio.run(collect())


def failure(call: Callable[[], Any]) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


def leaks(message: str, key: str) -> bool:
    """Whether `message` shows the key, a masked key, or any 8 characters of it."""
    return "***" in message or any(key[i : i + 8] in message for i in range(len(key) - 7))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def async_connections(client: httpx2.AsyncClient) -> tuple[int, int]:
    """(busy, idle) connections of an async pooled client (its aiohttp connector)."""
    connector = client._transport.client.connector
    return len(connector._acquired), sum(len(idle) for idle in connector._conns.values())


# Success


def test_it_generates_text_and_counts_the_usage_exactly(case, fake_providers):
    result = generate(case, case.endpoint(fake_providers), REQUEST)

    text = reply(case)
    assert result == GenerateResult(
        text=text, model=case.answered_model, finish_reason=case.stop, usage=expected_usage(case, text)
    )
    assert result.usage.raw[case.raw_input_field] > 0


def test_it_asks_for_structured_output_natively_and_returns_the_json(case, fake_providers):
    request = dataclasses.replace(REQUEST, json_schema=SCHEMA, schema_name="colour")

    result = generate(case, case.endpoint(fake_providers), request)

    assert json.loads(result.text) == SCHEMA_INSTANCE
    assert result.usage == expected_usage(case, result.text)


def test_it_sends_an_image_with_the_text(case, fake_providers):
    request = dataclasses.replace(REQUEST, image=ImageInput(PNG, "image/png"))

    result = generate(case, case.endpoint(fake_providers), request)

    assert result.text == reply(case, images=1)
    assert result.usage == expected_usage(case, result.text, images=1)


def test_cached_input_tokens_are_part_of_the_input_tokens(case, fake_providers):
    endpoint = case.endpoint(fake_providers, extra_headers={"X-Fake-Cached-Tokens": "3"})

    result = generate(case, endpoint, REQUEST)

    # Anthropic reports input_tokens=5 and cache_read_input_tokens=3: the client adds them up.
    assert result.usage == expected_usage(case, result.text, cached=3)


def test_openai_reasoning_tokens_are_part_of_the_output_tokens(fake_providers):
    case = CASES[0]
    result = generate(case, case.endpoint(fake_providers, model="o4-mini"), REQUEST)

    visible = tokens(result.text)
    assert (result.usage.output_tokens, result.usage.reasoning_tokens) == (3 * visible, 2 * visible)


def test_it_streams_deltas_then_one_end_with_the_full_result(case, fake_providers):
    events = stream_events(case, case.endpoint(fake_providers), REQUEST)

    *deltas, end = events
    assert len(deltas) > 1 and all(isinstance(event, TextDelta) for event in deltas)
    text = reply(case)
    assert "".join(delta.text for delta in deltas) == text
    assert end == StreamEnd(
        GenerateResult(text=text, model=case.answered_model, finish_reason=case.stop, usage=expected_usage(case, text))
    )


def test_a_finished_stream_reports_its_final_usage_as_partial_usage(case, fake_providers):
    stream = get_client(case.type).astream(case.endpoint(fake_providers), REQUEST, api_key=case.key)

    *_, end = events_of(stream)

    assert stream.result == end.result
    assert stream.partial_usage() == end.result.usage and not stream.partial_usage().estimated
    assert stream.text_so_far == end.result.text


def test_check_credentials_returns_the_model_the_provider_knows(case, fake_providers):
    model = get_client(case.type).check_credentials(case.endpoint(fake_providers), api_key=case.key)

    assert model == {"openai": "gpt-4o-mini"}.get(case.type.value, case.answered_model)


def test_the_registry_hands_out_one_client_per_provider():
    assert get_client("openai") is get_client(ProviderType.OPENAI)
    assert isinstance(get_client("claude"), AnthropicClient)
    assert isinstance(get_client("gemini"), GeminiClient)
    with pytest.raises(ValueError):
        get_client("mistral")


# Failures


def test_a_bad_key_is_an_authentication_error_without_the_key_in_it(case, fake_providers):
    bad_key = case.key.replace("test", "revoked")

    error = failure(lambda: generate(case, case.endpoint(fake_providers), REQUEST, key=bad_key))

    assert type(error) is AuthenticationError and error.fallback_ok
    assert error.status_code == case.bad_key_status  # Gemini says 400 API_KEY_INVALID
    assert not leaks(str(error), bad_key)
    assert error.__context__ is None and error.__cause__ is None


def test_a_bad_key_fails_a_stream_and_a_credentials_check_too(case, fake_providers):
    bad_key = case.key.replace("test", "invalid")
    client = get_client(case.type)

    errors = [
        failure(lambda: events_of(client.astream(case.endpoint(fake_providers), REQUEST, api_key=bad_key))),
        failure(lambda: client.check_credentials(case.endpoint(fake_providers), api_key=bad_key)),
    ]

    assert [type(error) for error in errors] == [AuthenticationError, AuthenticationError]
    assert not any(leaks(str(error), bad_key) for error in errors)


def test_an_empty_key_is_refused_before_anything_is_sent(case, fake_providers):
    error = failure(lambda: generate(case, case.endpoint(fake_providers), REQUEST, key=""))

    assert type(error) is AuthenticationError and error.status_code is None


def test_a_key_without_permission_is_a_permission_error(case, fake_providers):
    key = case.key.replace("test", "noperm")

    error = failure(lambda: generate(case, case.endpoint(fake_providers), REQUEST, key=key))

    assert type(error) is PermissionDeniedError and error.status_code == 403


def test_an_unknown_model_is_model_not_found(case, fake_providers):
    endpoint = case.endpoint(fake_providers, model="no-such-model")
    client = get_client(case.type)

    errors = [
        failure(lambda: asyncio.run(client.agenerate(endpoint, REQUEST, api_key=case.key))),
        failure(lambda: client.check_credentials(endpoint, api_key=case.key)),
    ]

    assert [(type(error), error.status_code) for error in errors] == [(ModelNotFoundError, 404)] * 2


def test_rate_limiting_carries_the_retry_after_header(case, fake_providers):
    endpoint = case.endpoint(fake_providers, extra_headers={"X-Fake-Fail": "429"})

    errors = [
        failure(lambda: generate(case, endpoint, REQUEST)),
        failure(lambda: stream_events(case, endpoint, REQUEST)),
    ]

    assert [(type(e), e.status_code, e.retry_after) for e in errors] == [(RateLimitedError, 429, 1.0)] * 2


def test_directives_in_the_key_work_like_headers(case, fake_providers):
    key = f"{case.key}~fail=429"

    error = failure(lambda: get_client(case.type).check_credentials(case.endpoint(fake_providers), api_key=key))

    assert type(error) is RateLimitedError and error.retry_after == 1.0
    assert not leaks(str(error), key)


@pytest.mark.parametrize("fail", ["500", "503", "529"])
def test_provider_outages_are_unavailable_errors_with_their_status(case, fake_providers, fail):
    endpoint = case.endpoint(fake_providers, extra_headers={"X-Fake-Fail": fail})
    started = time.monotonic()

    errors = [
        failure(lambda: generate(case, endpoint, REQUEST)),
        failure(lambda: stream_events(case, endpoint, REQUEST)),
    ]

    # Only Anthropic has a 529; OpenAI and Gemini answer 503 for it.
    status = 503 if fail == "529" and case.type is not ProviderType.CLAUDE else int(fail)
    assert [(type(e), e.status_code, e.fallback_ok) for e in errors] == [(ProviderUnavailableError, status, True)] * 2
    assert time.monotonic() - started < 1.0, "an SDK retried on its own"


def test_the_sdks_do_not_retry(case, fake_providers):
    requests: list[httpx2.Request] = []

    async def sent(request: httpx2.Request) -> None:
        requests.append(request)

    client = case.client_class(pool=HttpPool(async_event_hooks={"request": [sent]}))
    endpoint = case.endpoint(fake_providers, extra_headers={"X-Fake-Fail": "503"})

    failure(lambda: asyncio.run(client.agenerate(endpoint, REQUEST, api_key=case.key)))

    assert len(requests) == 1


@pytest.mark.parametrize("call", ["agenerate", "astream"])
def test_a_provider_that_does_not_answer_times_out(case, fake_providers, call):
    endpoint = case.endpoint(fake_providers, timeout=0.2, extra_headers={"X-Fake-Fail": "timeout"})
    started = time.monotonic()

    if call == "astream":
        error = failure(lambda: stream_events(case, endpoint, REQUEST))
    else:
        error = failure(lambda: generate(case, endpoint, REQUEST))

    assert type(error) is ProviderTimeoutError and error.fallback_ok
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("call", ["agenerate", "astream"])
def test_a_body_that_is_not_json_is_a_malformed_response(case, fake_providers, call):
    endpoint = case.endpoint(fake_providers, extra_headers={"X-Fake-Fail": "malformed"})

    if call == "astream":
        error = failure(lambda: stream_events(case, endpoint, REQUEST))
    else:
        error = failure(lambda: generate(case, endpoint, REQUEST))

    assert type(error) is MalformedResponseError and error.fallback_ok


def test_an_unreachable_endpoint_is_unreachable(case):
    endpoint = Endpoint(case.type, case.model, base_url=f"http://127.0.0.1:{closed_port()}/x", timeout=2)

    errors = [
        failure(lambda: generate(case, endpoint, REQUEST)),
        failure(lambda: stream_events(case, endpoint, REQUEST)),
        failure(lambda: get_client(case.type).check_credentials(endpoint, api_key=case.key)),
    ]

    assert [type(error) for error in errors] == [ProviderUnreachableError] * 3
    assert all("could not connect" in str(error) for error in errors)


# The OpenAI and Anthropic SDKs encode the request body as UTF-8 themselves; google-genai escapes it as ASCII JSON
# (so a lone surrogate does reach Google, as `\ud800`, and its answer is Google's to give).
ENCODING_SDKS = [case for case in CASES if case.type is not ProviderType.GEMINI]


@pytest.mark.parametrize("case", ENCODING_SDKS, ids=lambda case: case.type.value)
@pytest.mark.parametrize("call", ["agenerate", "astream"])
def test_text_that_cannot_be_encoded_fails_on_our_side_before_anything_is_sent(case, call):
    # A closed port: had anything been sent, the error would say the provider is unreachable.
    endpoint = Endpoint(case.type, case.model, base_url=f"http://127.0.0.1:{closed_port()}/x", timeout=2)
    request = dataclasses.replace(REQUEST, user_text="cut in the middle of an emoji \ud83d")

    if call == "astream":
        error = failure(lambda: stream_events(case, endpoint, request))
    else:
        error = failure(lambda: generate(case, endpoint, request))

    assert type(error) is ClientSideError
    assert (error.error_type, error.fallback_ok, error.status_code) == (ErrorType.LOCAL, False, None)
    assert "UnicodeEncodeError" in str(error) and "ud83d" not in str(error)


def test_a_request_our_code_cannot_build_fails_on_our_side(case):
    endpoint = Endpoint(case.type, case.model, base_url=f"http://127.0.0.1:{closed_port()}/x", timeout=2)
    # A schema holding something JSON cannot represent: a bug of ours, whatever the provider.
    request = dataclasses.replace(REQUEST, json_schema={"type": "object", "enum": {object()}})

    error = failure(lambda: generate(case, endpoint, request))

    assert type(error) is ClientSideError and not error.fallback_ok


def test_a_body_cut_short_is_a_lost_connection(case, fake_providers):
    endpoint = case.endpoint(fake_providers, extra_headers={"X-Fake-Fail": "midstream"})

    error = failure(lambda: generate(case, endpoint, REQUEST))

    assert type(error) is ProviderUnreachableError and "connection was lost" in str(error)


def test_a_stream_that_breaks_midway_says_what_it_had_consumed(case, fake_providers):
    endpoint = case.endpoint(fake_providers, extra_headers={"X-Fake-Fail": "midstream"})
    client = get_client(case.type)
    seen: list[str] = []

    async def consume(stream):
        async for event in stream:
            seen.append(event.text)

    stream = client.astream(endpoint, REQUEST, api_key=case.key)
    error = failure(lambda: asyncio.run(consume(stream)))

    assert type(error) is ProviderUnavailableError and "mid-stream" in str(error)
    assert seen and stream.text_so_far == "".join(seen) and stream.result is None
    usage = stream.partial_usage()
    assert usage.estimated
    assert usage.input_tokens == tokens(SYSTEM) + tokens(PROMPT)
    assert usage.output_tokens >= tokens(stream.text_so_far) > 0


def test_no_error_message_holds_the_key(case, fake_providers):
    key = case.key.replace("test", "revoked")
    client = get_client(case.type)
    scenarios = [
        (key, {}),
        (case.key, {"X-Fake-Fail": "429"}),
        (case.key, {"X-Fake-Fail": "500"}),
        (case.key, {"X-Fake-Fail": "malformed"}),
        (f"{case.key}~fail=503", {}),
    ]

    def message(key: str, headers: dict[str, str]) -> str:
        endpoint = case.endpoint(fake_providers, extra_headers=headers)
        return str(failure(lambda: asyncio.run(client.agenerate(endpoint, REQUEST, api_key=key))))

    messages = [message(k, headers) for k, headers in scenarios]

    assert len(messages) == len(scenarios)
    assert not [message for message, (k, _) in zip(messages, scenarios, strict=True) if leaks(message, k)]


# Connections


def test_a_stream_closed_early_closes_its_http_response(case, fake_providers):
    client = case.client_class()

    # The provider stalls after the first delta, so the response is surely still open when the stream is closed.
    endpoint = case.endpoint(fake_providers, extra_headers={"X-Fake-Stall-Ms": "5000"})

    async def scenario():
        stream = client.astream(endpoint, REQUEST, api_key=case.key)
        pool = client.pool.async_client(case.base_url(fake_providers))
        first = await stream.__anext__()
        busy_before = async_connections(pool)[0]
        await stream.aclose()
        return first, busy_before, async_connections(pool)[0], stream

    first, busy_before, busy_after, stream = asyncio.run(scenario())

    assert isinstance(first, TextDelta)
    assert (busy_before, busy_after) == (1, 0)
    assert stream.text_so_far == first.text
    usage = stream.partial_usage()
    assert usage.estimated and usage.input_tokens == tokens(SYSTEM) + tokens(PROMPT)
    assert usage.output_tokens >= tokens(first.text)


def test_calls_share_one_pooled_connection_that_holds_no_key(case, fake_providers):
    client = case.client_class()
    endpoint = case.endpoint(fake_providers)

    async def three_calls():
        await client.agenerate(endpoint, REQUEST, api_key=case.key)
        [event async for event in client.astream(endpoint, REQUEST, api_key=case.key)]
        await client.agenerate(endpoint, REQUEST, api_key=case.key)
        pool = client.pool.async_client(case.base_url(fake_providers))
        return pool, async_connections(pool), client.pool.async_client("http://127.0.0.1:1/other")

    pool, connections, other = asyncio.run(three_calls())

    assert connections == (0, 1)  # all three calls on one connection, idle again
    assert case.key not in str(pool.headers)
    assert other is not pool


def test_async_pools_are_per_event_loop(case, fake_providers):
    client = case.client_class()
    endpoint = case.endpoint(fake_providers)

    async def two_calls():
        await client.agenerate(endpoint, REQUEST, api_key=case.key)
        await client.agenerate(endpoint, REQUEST, api_key=case.key)
        pool = client.pool.async_client(case.base_url(fake_providers))
        return pool, async_connections(pool)

    first_pool, connections = asyncio.run(two_calls())
    second_pool, _ = asyncio.run(two_calls())

    assert connections == (0, 1)  # both calls on one connection, idle again
    assert first_pool is not second_pool
    assert first_pool.is_closed  # closed with its loop


SDK_CASES = pytest.mark.parametrize("sdk_case", CASES[:2], ids=lambda case: case.type.value)


@SDK_CASES
def test_concurrent_async_calls_on_one_shared_sdk_each_send_their_own_key(sdk_case, fake_providers):
    client = sdk_case.client_class()
    endpoint = sdk_case.endpoint(fake_providers)
    bad_key = sdk_case.key.replace("test", "revoked")

    async def scenario():
        results = await asyncio.gather(
            *(client.agenerate(endpoint, REQUEST, api_key=key) for key in (sdk_case.key, bad_key, sdk_case.key)),
            client.astream(endpoint, REQUEST, api_key=bad_key).__anext__(),
            return_exceptions=True,
        )
        sdk, _ = client._async_sdk(endpoint, sdk_case.key)
        assert client._async_sdk(endpoint, bad_key)[0] is sdk  # one object for every key
        return results, sdk

    (good, bad, good_again, bad_stream), sdk = asyncio.run(scenario())

    assert isinstance(good, GenerateResult) and isinstance(good_again, GenerateResult)
    assert isinstance(bad, AuthenticationError) and isinstance(bad_stream, AuthenticationError)
    assert sdk.api_key == client.KEY_PLACEHOLDER  # the shared object never holds a real key


@SDK_CASES
def test_an_async_call_sends_its_key_once_and_the_placeholder_never(sdk_case):
    endpoint = Endpoint(sdk_case.type, sdk_case.model, base_url="http://recorded/v1")
    body = recorded(
        "openai_chat_ok.json" if sdk_case.type == ProviderType.OPENAI else "anthropic_messages_ok_sdk_snapshot.json"
    )
    client, pool = replay(sdk_case, body)

    asyncio.run(client.agenerate(endpoint, REQUEST, api_key=sdk_case.key))

    headers = pool.requests[-1].headers
    assert headers.get_list("authorization") == [f"Bearer {sdk_case.key}"]
    assert "x-api-key" not in headers
    assert not any(client.KEY_PLACEHOLDER in value for value in headers.values())


# Recorded wire bodies, served to the real SDKs


class RecordedPool(HttpPool):
    """Answers every request with one recorded response."""

    def __init__(self, body: bytes, *, status: int = 200, content_type: str = "application/json", headers=None):
        super().__init__()
        self.requests: list[httpx2.Request] = []

        def answer(request: httpx2.Request) -> httpx2.Response:
            request.read()
            self.requests.append(request)
            return httpx2.Response(status, content=body, headers={"content-type": content_type, **(headers or {})})

        self._transport = httpx2.MockTransport(answer)

    def client(self, base_url: str) -> httpx2.Client:
        return httpx2.Client(transport=self._transport)

    def async_client(self, base_url: str) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=self._transport)

    def sent_json(self) -> dict:
        return json.loads(self.requests[-1].content)


def recorded(name: str) -> bytes:
    return (WIRE / name).read_bytes()


def replay(case: Case, body: bytes, **options: Any) -> tuple[Any, RecordedPool]:
    pool = RecordedPool(body, **options)
    return case.client_class(pool=pool), pool


def test_recorded_openai_answers_parse(fake_providers):
    case = CASES[0]
    endpoint = Endpoint(case.type, "gpt-4o-mini", base_url="http://recorded/v1")
    client, _ = replay(case, recorded("openai_chat_ok.json"))
    assert asyncio.run(client.agenerate(endpoint, REQUEST, api_key=case.key)) == GenerateResult(
        "YES", "gpt-4o-mini-2024-07-18", "stop", TokenUsage(input_tokens=146, output_tokens=3)
    )

    client, pool = replay(case, recorded("openai_chat_stream.sse"), content_type="text/event-stream")
    *_, end = events_of(client.astream(endpoint, REQUEST, api_key=case.key))
    assert end.result == GenerateResult(
        "Hello! How can I assist you today?",
        "gpt-4o-2024-08-06",
        "stop",
        TokenUsage(input_tokens=11, output_tokens=9),
    )
    assert pool.sent_json()["stream_options"] == {"include_usage": True}

    schema_request = json.loads(recorded("openai_chat_json_schema_request.json"))
    client, pool = replay(case, recorded("openai_chat_json_schema_ok.json"))
    request = dataclasses.replace(
        REQUEST,
        json_schema=schema_request["response_format"]["json_schema"]["schema"],
        schema_name="MathResponse",
    )
    result = asyncio.run(client.agenerate(endpoint, request, api_key=case.key))
    assert json.loads(result.text)["final_answer"] == "x = -\\frac{29}{8}"
    assert pool.sent_json()["response_format"] == schema_request["response_format"]


@pytest.mark.parametrize(
    ("case_index", "answer", "expected"),
    [
        (
            0,
            "openai_chat_ok.json",
            {
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
                "max_completion_tokens": 200,
                "temperature": 0.2,
            },
        ),
        (
            1,
            "anthropic_messages_ok_sdk_snapshot.json",
            {
                "system": SYSTEM,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": 200,
                "temperature": 0.2,
            },
        ),
        (
            2,
            "gemini_stream_sse_single_chunk.sse",
            {
                "systemInstruction": {"parts": [{"text": SYSTEM}], "role": "user"},
                "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
                "generationConfig": {"maxOutputTokens": 200, "temperature": 0.2},
            },
        ),
    ],
)
def test_the_request_carries_the_prompt_and_the_limits(case_index, answer, expected):
    case = CASES[case_index]
    body = recorded(answer)
    if answer.endswith(".sse"):
        body = body.removeprefix(b"data: ")
    client, pool = replay(case, body)

    asyncio.run(
        client.agenerate(
            Endpoint(case.type, case.model), dataclasses.replace(REQUEST, temperature=0.2), api_key=case.key
        )
    )

    sent = pool.sent_json()
    assert {name: sent.get(name) for name in expected} == expected


def test_our_openai_image_request_has_the_recorded_shape():
    case = CASES[0]
    client, pool = replay(case, recorded("openai_chat_image_base64_ok.json"))
    recorded_request = json.loads(recorded("openai_chat_image_base64_request.json"))
    request = GenerateRequest(system="", user_text="What's in this image?", image=ImageInput(PNG, "image/png"))

    result = asyncio.run(
        client.agenerate(Endpoint(case.type, "gpt-4o-mini", base_url="http://recorded/v1"), request, api_key="sk-x")
    )

    assert pool.sent_json()["messages"] == recorded_request["messages"]
    assert result.usage == TokenUsage(input_tokens=8512, output_tokens=32)


def test_recorded_anthropic_answers_parse():
    case = CASES[1]
    endpoint = Endpoint(case.type, "claude-haiku-4-5", base_url="http://recorded")
    client, pool = replay(case, recorded("anthropic_messages_ok_sdk_snapshot.json"))
    result = asyncio.run(client.agenerate(endpoint, dataclasses.replace(REQUEST, json_schema=SCHEMA), api_key=case.key))
    assert json.loads(result.text)["total"] == 14.0
    assert (result.model, result.finish_reason) == ("claude-sonnet-4-5-20250929", "end_turn")
    assert result.usage == TokenUsage(input_tokens=406, output_tokens=50)
    assert pool.sent_json()["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}

    client, _ = replay(case, recorded("anthropic_messages_stream.sse"), content_type="text/event-stream")
    *deltas, end = events_of(client.astream(endpoint, REQUEST, api_key=case.key))
    assert [delta.text for delta in deltas] == ["Hello"]
    # message_start said input 10 / output 2; message_delta's running count (4) wins.
    assert end.result == GenerateResult(
        "Hello", "claude-haiku-4-5-20251001", "end_turn", TokenUsage(input_tokens=10, output_tokens=4)
    )


def test_recorded_gemini_answers_parse():
    case = CASES[2]
    endpoint = Endpoint(case.type, "gemini-2.5-flash", base_url="http://recorded")
    client, pool = replay(case, recorded("gemini_stream_sse_single_chunk.sse"), content_type="text/event-stream")
    *_, end = events_of(client.astream(endpoint, REQUEST, api_key=case.key))
    assert end.result == GenerateResult(
        "The capital of France is **Paris**.",
        "gemini-2.5-flash",
        "STOP",
        TokenUsage(input_tokens=15, output_tokens=8 + 16, reasoning_tokens=16),
    )
    assert "alt=sse" in str(pool.requests[-1].url)

    # The recorded JSON-array stream, re-framed as SSE: its thought summary is not part of the text.
    chunks = json.loads(recorded("gemini_stream_json_array.json"))
    sse = b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in chunks)
    client, _ = replay(case, sse, content_type="text/event-stream")
    *deltas, end = events_of(client.astream(endpoint, REQUEST, api_key=case.key))
    assert [delta.text for delta in deltas] == ["Scoop"]
    assert end.result.usage == TokenUsage(input_tokens=11, output_tokens=2 + 291, reasoning_tokens=291)

    answer = {
        "candidates": [{"content": {"parts": [{"text": json.dumps(SCHEMA_INSTANCE)}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 6},
    }
    client, pool = replay(case, json.dumps(answer).encode())
    result = asyncio.run(client.agenerate(endpoint, dataclasses.replace(REQUEST, json_schema=SCHEMA), api_key=case.key))
    assert json.loads(result.text) == SCHEMA_INSTANCE
    config = pool.sent_json()["generationConfig"]
    assert (config["responseMimeType"], config["responseJsonSchema"]) == ("application/json", SCHEMA)


def test_recorded_usage_shapes_normalise():
    anthropic = json.loads(recorded("anthropic_messages_ok_sdk_snapshot.json"))["usage"]
    assert anthropic_usage(anthropic) == TokenUsage(input_tokens=406, output_tokens=50)
    assert anthropic_usage(
        {
            "input_tokens": 5,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 50,
            "output_tokens": 7,
        }
    ) == TokenUsage(input_tokens=155, output_tokens=7, cached_input_tokens=50, cache_write_tokens=100)

    gemini = json.loads(recorded("gemini_stream_json_array.json"))[-1]["usageMetadata"]
    assert gemini_usage(gemini) == TokenUsage(input_tokens=11, output_tokens=293, reasoning_tokens=291)
    assert gemini_usage({"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 5}) == (
        TokenUsage(input_tokens=100, output_tokens=5, cached_input_tokens=60)
    )

    openai = json.loads(recorded("openai_chat_json_schema_ok.json"))["usage"]
    assert openai_usage(openai) == TokenUsage(input_tokens=127, output_tokens=93)
    assert openai_usage(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 256},
        }
    ) == TokenUsage(input_tokens=2000, output_tokens=300, cached_input_tokens=1024, reasoning_tokens=256)

    with pytest.raises(MalformedResponseError):
        openai_usage({"completion_tokens": 3})


@pytest.mark.parametrize(
    ("case_index", "name", "status", "expected"),
    [
        (0, "openai_chat_401.json", 401, AuthenticationError),
        (0, "openai_chat_429_rate_limit.json", 429, RateLimitedError),
        (1, "anthropic_messages_401.json", 401, AuthenticationError),
        (1, "anthropic_messages_429.json", 429, RateLimitedError),
        (1, "anthropic_messages_529.json", 529, ProviderUnavailableError),
        (2, "gemini_generate_400_api_key_invalid.json", 400, AuthenticationError),
        (2, "gemini_generate_429.json", 429, RateLimitedError),
    ],
)
def test_recorded_error_bodies_map_to_typed_errors(case_index, name, status, expected):
    case = CASES[case_index]
    client, _ = replay(case, recorded(name), status=status, headers={"retry-after": "20"})
    endpoint = Endpoint(case.type, case.model, base_url="http://recorded")

    error = failure(lambda: asyncio.run(client.agenerate(endpoint, REQUEST, api_key="sk-not-a-real-key")))

    assert type(error) is expected and error.status_code == status
    assert error.retry_after == (20.0 if status == 429 else None)
    # OpenAI's 401 echoes a masked piece of the key ("<not-a-r****key>").
    assert "****" not in str(error) and "not-a-r" not in str(error)


def test_a_gemini_429_without_a_header_takes_the_retry_delay_from_the_body():
    body = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "Quota exceeded.",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
        }
    }
    client, _ = replay(CASES[2], json.dumps(body).encode(), status=429)

    error = failure(
        lambda: asyncio.run(
            client.agenerate(Endpoint(ProviderType.GEMINI, "gemini-2.5-flash"), REQUEST, api_key="AIza")
        )
    )

    assert type(error) is RateLimitedError and error.retry_after == 37.0


@pytest.mark.parametrize(
    ("case_index", "body"),
    [
        (0, {"error": {"message": "Invalid 'temperature'.", "type": "invalid_request_error", "code": None}}),
        (
            1,
            {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}},
        ),
        (
            2,
            {
                "error": {
                    "code": 400,
                    "message": "Invalid value at 'temperature'.",
                    "status": "INVALID_ARGUMENT",
                }
            },
        ),
    ],
)
def test_a_bad_request_is_not_worth_another_provider(case_index, body):
    case = CASES[case_index]
    client, _ = replay(case, json.dumps(body).encode(), status=400)

    error = failure(lambda: asyncio.run(client.agenerate(Endpoint(case.type, case.model), REQUEST, api_key=case.key)))

    assert type(error) is BadRequestError and not error.fallback_ok and error.status_code == 400
    assert "temperature" in str(error) or "max_tokens" in str(error)


def test_structured_output_that_is_not_json_is_malformed():
    case = CASES[0]
    client, _ = replay(case, recorded("openai_chat_ok.json"))  # content "YES"

    error = failure(
        lambda: asyncio.run(
            client.agenerate(
                Endpoint(case.type, case.model), dataclasses.replace(REQUEST, json_schema=SCHEMA), api_key="sk-x"
            )
        )
    )

    assert type(error) is MalformedResponseError


def test_a_200_without_the_required_parts_is_malformed(case):
    client, _ = replay(case, b'{"id": "x"}')

    error = failure(lambda: asyncio.run(client.agenerate(Endpoint(case.type, case.model), REQUEST, api_key=case.key)))

    assert type(error) is MalformedResponseError


def test_scrubbing_removes_keys_pieces_of_keys_and_masked_keys():
    key = "sk-proj-Zq8XfW3kP0sLm2Nb"
    text = f"bad {key}; echo sk-proj-Zq8X...; masked sk-proj-****m2Nb; piece P0sLm2Nb! fine words"

    assert scrub_secret(text, key) == "bad [redacted]; echo [redacted] masked [redacted] piece [redacted] fine words"


def test_the_validators_know_where_each_client_sends_a_key_without_a_base_url():
    from providers.clients import anthropic_client, gemini_client, openai_client
    from providers.validators import DEFAULT_BASE_URLS

    assert DEFAULT_BASE_URLS == {
        ProviderType.OPENAI: openai_client.DEFAULT_BASE_URL,
        ProviderType.CLAUDE: anthropic_client.DEFAULT_BASE_URL,
        ProviderType.GEMINI: gemini_client.DEFAULT_BASE_URL,
    }
