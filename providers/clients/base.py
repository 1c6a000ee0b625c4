"""The one small interface every provider client implements, and the errors it raises.

A client never keeps an API key: the caller decrypts it and passes it to each call. Connections are pooled
per provider (and base URL) inside the client module; the SDKs' own retries are off because the gateway owns
retries and fallbacks.
"""

from __future__ import annotations

import email.utils
import enum
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import httpx2


class ProviderType(enum.StrEnum):
    GEMINI = "gemini"
    OPENAI = "openai"
    CLAUDE = "claude"


# How a provider type is written wherever a person reads it (admin lists, filters, forms, the dashboard).
PROVIDER_NAMES: dict[str, str] = {
    ProviderType.OPENAI: "OpenAI",
    ProviderType.CLAUDE: "Anthropic Claude",
    ProviderType.GEMINI: "Google Gemini",
}


def provider_type_choices() -> list[tuple[str, str]]:
    """Model and form choices of the provider type, spelt as PROVIDER_NAMES spells them."""
    return [(provider_type.value, PROVIDER_NAMES[provider_type]) for provider_type in ProviderType]


class ErrorType(enum.StrEnum):
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    MODEL_NOT_FOUND = "model_not_found"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"  # the provider answered 5xx / 529 overloaded
    UNREACHABLE = "unreachable"  # no answer at all: DNS, refused connection, reset
    BAD_REQUEST = "bad_request"
    MALFORMED_RESPONSE = "malformed_response"
    LOCAL = "local"  # our side of the wire failed before anything was sent: says nothing about the provider


class ProviderError(Exception):
    """A provider call failed. `fallback_ok` says whether trying another provider makes sense.

    The message is ours or the provider's text with any key scrubbed; it never contains the API key.
    """

    error_type: ErrorType = ErrorType.UNAVAILABLE
    fallback_ok: bool = True

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class AuthenticationError(ProviderError):
    # A bad or revoked key on one config says nothing about the next config's key.
    error_type = ErrorType.AUTHENTICATION


class PermissionDeniedError(ProviderError):
    error_type = ErrorType.PERMISSION


class ModelNotFoundError(ProviderError):
    error_type = ErrorType.MODEL_NOT_FOUND


class RateLimitedError(ProviderError):
    error_type = ErrorType.RATE_LIMITED


class ProviderTimeoutError(ProviderError):
    error_type = ErrorType.TIMEOUT


class ProviderUnavailableError(ProviderError):
    error_type = ErrorType.UNAVAILABLE


class ProviderUnreachableError(ProviderError):
    error_type = ErrorType.UNREACHABLE


class BadRequestError(ProviderError):
    # The same request would be just as bad at another provider.
    error_type = ErrorType.BAD_REQUEST
    fallback_ok = False


class MalformedResponseError(ProviderError):
    error_type = ErrorType.MALFORMED_RESPONSE


class ClientSideError(ProviderError):
    """The call failed on our side before anything reached the provider: the request could not be encoded or
    built (input that should have been refused, or a bug of ours). It says nothing about the provider, so it never
    counts toward a cooldown; and another provider would fail the same way, so none is tried."""

    error_type = ErrorType.LOCAL
    fallback_ok = False


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach one provider model (everything but the key)."""

    provider_type: ProviderType
    model: str
    base_url: str | None = None
    timeout: float = 60.0
    extra_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class GenerateRequest:
    system: str
    user_text: str
    image: ImageInput | None = None
    max_output_tokens: int = 1024
    temperature: float | None = None
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"


@dataclass(frozen=True)
class TokenUsage:
    """Tokens as billed, normalised across providers.

    `input_tokens` is every input token, including cache reads and cache writes; `output_tokens` is every
    billed output token, including reasoning/thinking. The other three are the parts of those totals that
    are priced differently. `raw` keeps the provider's own usage object as it reported it.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # True when some of the counts are our estimate, not the provider's report (a stream cut short).
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class GenerateResult:
    text: str
    model: str
    finish_reason: str | None
    usage: TokenUsage


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class StreamEnd:
    result: GenerateResult


StreamEvent = TextDelta | StreamEnd


def estimate_tokens(text: str) -> int:
    """Estimate tokens as one per four characters, rounded up (only where the provider has not counted)."""
    return -(-len(text) // 4)


class StreamState:
    """What a stream has seen so far; the client module's event generator fills it in as events arrive."""

    __slots__ = ("text_parts", "model", "finish_reason", "usage", "prompt_estimate", "result")

    def __init__(self, *, model: str, request: GenerateRequest):
        self.text_parts: list[str] = []
        self.model = model
        self.finish_reason: str | None = None
        self.usage: TokenUsage | None = None  # the latest usage the provider reported, if any
        # Images are not in this estimate: their token price depends on the provider and the size.
        self.prompt_estimate = estimate_tokens(request.system) + estimate_tokens(request.user_text)
        self.result: GenerateResult | None = None

    def text(self) -> str:
        return "".join(self.text_parts)

    def partial_usage(self) -> TokenUsage:
        if self.result is not None:
            return self.result.usage
        reported = self.usage or TokenUsage()
        # The provider reports output tokens at the end (OpenAI, Anthropic) or as a running count that
        # can lag the text already passed on (Gemini), so until then we estimate ceil(len(text) / 4): rough,
        # but never zero for text the client has already received.
        return replace(
            reported,
            input_tokens=reported.input_tokens or self.prompt_estimate,
            output_tokens=max(reported.output_tokens, estimate_tokens(self.text())),
            estimated=True,
        )


class AsyncProviderStream(AsyncIterator[StreamEvent]):
    """One streamed generation: `TextDelta`s, then one `StreamEnd` carrying the full result and usage.

    Nothing is sent until the first event is awaited; errors are `ProviderError`s raised from `__anext__()`. The
    HTTP response is closed when the stream ends, fails, or is closed: a consumer that stops early (the client went
    away) must call `aclose()` or use `async with`; a task cancelled while awaiting the next event (an ASGI client
    disconnect) closes it too. Then `partial_usage()` and `text_so_far` tell what to record.
    """

    def __init__(self, events: AsyncGenerator[StreamEvent, None], state: StreamState):
        self._events = events
        self._state = state

    @property
    def text_so_far(self) -> str:
        """The text passed on so far."""
        return self._state.text()

    @property
    def result(self) -> GenerateResult | None:
        """The final result once the `StreamEnd` has been produced, else None."""
        return self._state.result

    def partial_usage(self) -> TokenUsage:
        """Tokens this call has consumed so far: the final usage after a `StreamEnd`; otherwise what the
        provider reported, with the missing counts estimated (`estimated=True`). Use it to record an aborted
        or failed stream."""
        return self._state.partial_usage()

    def __aiter__(self) -> AsyncProviderStream:
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> AsyncProviderStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class ProviderClient(Protocol):
    """One provider behind the gateway's interface. All methods raise `ProviderError` subclasses."""

    provider_type: ProviderType

    async def agenerate(self, endpoint: Endpoint, request: GenerateRequest, *, api_key: str) -> GenerateResult: ...

    def astream(self, endpoint: Endpoint, request: GenerateRequest, *, api_key: str) -> AsyncProviderStream:
        """Return the stream without sending anything yet; see `AsyncProviderStream`."""
        ...

    def check_credentials(self, endpoint: Endpoint, *, api_key: str) -> str:
        """Retrieve the configured model without spending tokens; return the model id the provider knows."""
        ...


# Helpers for the client modules: turning provider failures into the errors above.

_STATUS_ERRORS: dict[int, type[ProviderError]] = {
    401: AuthenticationError,
    402: PermissionDeniedError,  # billing: the account, not the request, is the problem
    403: PermissionDeniedError,
    404: ModelNotFoundError,
    408: ProviderTimeoutError,
    429: RateLimitedError,
}


def error_class_for_status(status: int | None) -> type[ProviderError]:
    if status is None:
        return ProviderUnavailableError
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    if 400 <= status < 500:
        return BadRequestError
    return ProviderUnavailableError  # 5xx, Anthropic's 529 overloaded, anything odd


_MASKED_TOKEN = re.compile(r"\S*(?:\*{3,}|…)\S*")
_WORD = re.compile(r"\S+")
_FRAGMENT = 8


def scrub_secret(text: str, secret: str | None) -> str:
    """Remove `secret`, any word holding an 8-character piece of it, and masked keys (`sk-ab****wxyz`)."""
    if secret:
        text = text.replace(secret, "[redacted]")
        pieces = {secret[i : i + _FRAGMENT] for i in range(len(secret) - _FRAGMENT + 1)}

        def redact(match: re.Match[str]) -> str:
            word = match.group()
            if any(word[i : i + _FRAGMENT] in pieces for i in range(len(word) - _FRAGMENT + 1)):
                return "[redacted]"
            return word

        if pieces:
            text = _WORD.sub(redact, text)
    return _MASKED_TOKEN.sub("[redacted]", text)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date), if present."""
    if not headers:
        return None
    try:
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return max(float(milliseconds) / 1000, 0.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(float(value), 0.0)
        except ValueError:
            moment = email.utils.parsedate_to_datetime(value)
            return max(moment.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, OverflowError):
        return None


def provider_error(
    provider: str,
    error_class: type[ProviderError],
    *,
    status: int | None,
    detail: str = "",
    api_key: str | None,
    retry_after: float | None = None,
) -> ProviderError:
    """Build a typed error whose message names the provider and status and carries a scrubbed `detail`."""
    head = f"{provider}: HTTP {status}" if status is not None else provider
    # Scrub before cutting: a cut could leave a piece of the key too short to recognise.
    detail = scrub_secret(" ".join(detail.split()), api_key)[:400]
    return error_class(f"{head}: {detail}" if detail else head, status_code=status, retry_after=retry_after)


def status_error(
    provider: str,
    status: int | None,
    *,
    kind: str,
    message: str,
    api_key: str,
    retry_after: float | None = None,
    error_class: type[ProviderError] | None = None,
) -> ProviderError:
    """An HTTP error status as its typed error (`error_class` when the API says more than the status): the API's
    error kind and message as the detail, but for a refused key only that it was refused (the 401 texts echo a
    masked piece of the key)."""
    error_class = error_class or error_class_for_status(status)
    if error_class is AuthenticationError:
        message = "the API key was refused"
    return provider_error(
        provider,
        error_class,
        status=status,
        detail=f"{kind}: {message}" if kind else message,
        api_key=api_key,
        retry_after=retry_after,
    )


def transport_error(
    provider: str, exc: BaseException, *, api_key: str, midstream: bool, sdk: Any = None
) -> ProviderError | None:
    """A timeout or a failed connection, from httpx2 or, with `sdk` (the openai or anthropic module: both SDKs
    are generated alike), from the SDK, which also says when an answer had the wrong shape. None otherwise."""
    timeouts: tuple[type, ...] = (httpx2.TimeoutException,)
    connections: tuple[type, ...] = (httpx2.TransportError,)
    if sdk is not None:
        if isinstance(exc, sdk.APIResponseValidationError):
            return provider_error(provider, MalformedResponseError, status=exc.status_code, detail="", api_key=api_key)
        timeouts, connections = (sdk.APITimeoutError, *timeouts), (sdk.APIConnectionError, *connections)
    if isinstance(exc, timeouts):
        return provider_error(provider, ProviderTimeoutError, status=None, detail="timed out", api_key=api_key)
    if isinstance(exc, connections):
        return connection_error(provider, exc, midstream=midstream)
    return None


def local_error(provider: str, exc: BaseException, *, midstream: bool = False) -> ClientSideError | None:
    """A failure of ours while the SDK built the request, before it was sent; None for anything else.

    Only encoding (UnicodeEncodeError: nothing of a provider's is ever encoded, only what we send) and, before
    the answer started, a TypeError (an argument the SDK cannot serialise) are ours for sure; the message names the
    exception's type only, never the text it was given.
    """
    if isinstance(exc, UnicodeEncodeError) or (not midstream and isinstance(exc, TypeError)):
        return ClientSideError(f"{provider}: the request could not be built on our side ({type(exc).__name__})")
    return None


def built_locally(provider: str, function: Callable[..., _T], /, *args: Any) -> _T:
    """Run our own request-building code (`function(*args)`); any failure is a `ClientSideError`, never the
    provider's. Raised outside the `except` block, as in `call_mapped`."""
    try:
        return function(*args)
    except Exception as exc:
        error = ClientSideError(f"{provider}: the request could not be built on our side ({type(exc).__name__})")
    raise error


def unreadable_error(provider: str, exc: BaseException, *, api_key: str) -> ProviderError | None:
    """A body that is not JSON (json.JSONDecodeError) or not the expected shape (pydantic's errors) as a
    malformed response; None for anything else."""
    if isinstance(exc, (ValueError, httpx2.DecodingError)):
        detail = f"unreadable response ({type(exc).__name__})"
        return provider_error(provider, MalformedResponseError, status=None, detail=detail, api_key=api_key)
    return None


def connection_error(provider: str, exc: BaseException, *, midstream: bool) -> ProviderError:
    """The error for a connection that failed (`exc`, or the transport error the SDK wrapped in it)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    name = type(cause).__name__
    if midstream:
        # It did answer: the connection broke while the answer was streaming.
        return ProviderUnavailableError(f"{provider}: the connection broke mid-stream ({name})")
    if "Connect" in name:
        return ProviderUnreachableError(f"{provider}: could not connect ({name})")
    # Reset or cut before a complete answer.
    return ProviderUnreachableError(f"{provider}: the connection was lost ({name})")


def require_key(provider: str, api_key: str) -> None:
    # An empty key would make some SDKs fall back to a key from the environment.
    if not api_key:
        raise AuthenticationError(f"{provider}: no API key")


_T = TypeVar("_T")
DONE: Any = object()  # what `anext_mapped` returns at the end
ErrorMapper = Callable[[Exception], ProviderError | None]


def call_mapped(map_error: ErrorMapper, function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Call `function`, turning the exceptions `map_error` knows into `ProviderError`s.

    The new error is raised outside the `except` block on purpose: chained to the SDK's exception it would
    keep that exception's request (with the API key in its headers) and its unscrubbed message alive.
    """
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        error = map_error(exc)
        if error is None:
            raise
    raise error


async def acall_mapped(map_error: ErrorMapper, awaitable: Awaitable[_T]) -> _T:
    try:
        return await awaitable
    except Exception as exc:
        error = map_error(exc)
        if error is None:
            raise
    raise error


async def anext_mapped(map_error: ErrorMapper, iterator: AsyncIterator[_T]) -> _T:
    """`anext(iterator)` with errors mapped as in `call_mapped`; returns `DONE` at the end."""
    return await acall_mapped(map_error, anext(iterator, DONE))
