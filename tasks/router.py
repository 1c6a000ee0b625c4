"""Choosing providers for a task call and moving on when one fails.

Candidates are the active configs serving the task, by priority; configs of equal priority are put in a
weighted random order (an A/B split by weight); configs cooling down after repeated failures are skipped. For
each candidate in turn: reserve the call's token estimate (a config over its limit is skipped), call the
provider, record the attempt. A failure another provider might not have (timeout, 429, 5xx/529, connection
error, bad or revoked key, unreadable answer) moves on to the next candidate; a bad request stops, since the
same request would be refused everywhere. With no config serving the task, the environment fallback
(GEMINI_API_KEY) is the only candidate.

Structured output that fails validation is retried once: on the next candidate if there is one (another model
is likelier to get it right), else on the same one. Both attempts are recorded as `invalid_output`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from providers.clients import get_client
from providers.clients.base import (
    AsyncProviderStream,
    AuthenticationError,
    Endpoint,
    ErrorType,
    GenerateRequest,
    GenerateResult,
    MalformedResponseError,
    ProviderError,
    ProviderType,
    StreamEvent,
    TokenUsage,
)
from providers.fields import DecryptionError
from providers.models import ProviderConfig, Task
from runtime.aio import shielded
from tasks import selectors
from tasks.prompts import TaskSpec
from tasks.responses import TaskError
from tasks.schemas import OutputInvalid, OutputSchema
from tasks.selectors import CandidateConfig
from tasks.services import Prepared
from usage.models import Outcome, UsageRecord
from usage.services import (
    Attempt,
    Hold,
    LimitExceeded,
    Reservation,
    attempt_build,
    attempt_save_async,
    has_limits,
    tokens_reserve_async,
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider the router may try: a config, or the environment fallback (`config` None)."""

    config: ProviderConfig | None
    provider_type: ProviderType
    name: str
    endpoint: Endpoint
    env_key: str | None = None  # the environment fallback's key; a config's key is decrypted per call
    known_failures: int = 0  # the config's consecutive failures when it was read

    @classmethod
    def for_config(cls, candidate: CandidateConfig) -> Candidate:
        config = candidate.config
        return cls(
            config,
            ProviderType(config.provider_type),
            config.display_name,
            config.endpoint(),
            known_failures=candidate.known_failures,
        )

    @property
    def config_id(self) -> int | None:
        return self.config.pk if self.config is not None else None

    @property
    def has_limits(self) -> bool:
        return has_limits(self.config)

    def api_key(self) -> str:
        if self.config is None:
            return self.env_key or ""
        try:
            return self.config.reveal_api_key()
        except DecryptionError:
            # The stored key is unusable for this config alone: the next config may well work.
            raise AuthenticationError(f"{self.name}: the stored API key cannot be decrypted") from None


def environment_candidate(spec: TaskSpec) -> Candidate | None:
    """The hardcoded fallback for a task (Gemini from GEMINI_API_KEY), or None when it is not set."""
    key = settings.GEMINI_API_KEY
    if not key:
        return None
    endpoint = Endpoint(
        provider_type=ProviderType.GEMINI,
        model=getattr(settings, spec.fallback_model_setting),
        base_url=settings.GEMINI_BASE_URL or None,
        timeout=float(settings.GEMINI_TIMEOUT_SECONDS),
    )
    return Candidate(None, ProviderType.GEMINI, "environment fallback (GEMINI_API_KEY)", endpoint, env_key=key)


def estimate_tokens(request: GenerateRequest) -> int:
    return selectors.estimate_tokens(request, settings.TASK_IMAGE_TOKEN_ALLOWANCE)


def _task_label(task: str) -> str:
    return f"'{task}' ({Task(task).label})"


class TaskCall:
    """One task request on its way through the router: who, what, the attempts so far and the clock.

    `provider_seconds` is the time spent awaiting providers, so that the gateway's own time is the rest.
    """

    __slots__ = ("task", "request_id", "user_id", "started", "provider_seconds", "attempts", "after_response")

    def __init__(
        self,
        *,
        task: str,
        request_id: str,
        started: float,
        after_response: list[Callable[[], Awaitable[Any]]] | None = None,
    ):
        self.task = task
        self.request_id = request_id
        self.user_id: int | None = None
        self.started = started
        self.provider_seconds = 0.0
        self.attempts = 0
        # Work the server runs once the response has been sent (`runtime.asgi`); None: no such server.
        self.after_response = after_response

    def gateway_ms(self) -> float:
        return (time.perf_counter() - self.started - self.provider_seconds) * 1000


@dataclass(slots=True)
class Served:
    """A successful call: who served it, what it said, and its usage record."""

    candidate: Candidate
    result: GenerateResult
    value: Any  # the validated structured output, or the text
    record: UsageRecord


@dataclass(slots=True)
class OpenStream:
    """A stream that has produced its first event, so it is past the point where another provider is tried."""

    candidate: Candidate
    stream: AsyncProviderStream
    first: StreamEvent
    reservation: Reservation | None
    attempt: int
    opened: float  # perf_counter() when the call started, for the latency


async def record(
    call: TaskCall,
    candidate: Candidate,
    reservation: Reservation | None,
    *,
    attempt: int,
    outcome: str,
    usage: TokenUsage | None,
    latency: float,
    model: str | None = None,
    error_type: str = "",
    streamed: bool = False,
    after_response: bool = False,
) -> UsageRecord:
    """Record one attempt: its row, costed, and the settlement of its reservation.

    The row is built (and costed) here, then saved with the rows of other calls that finish meanwhile
    (`usage.services.attempt_save_async`). With `after_response`, and when the server allows it
    (`call.after_response`, the lean ASGI path), the save waits until the response has been sent: the caller has
    its answer a database round trip sooner, and the row is written a moment later, before the request ends.
    Otherwise it is saved now.

    The save is shielded: a client going away mid-record must not lose the row or the settlement.
    """
    row = attempt_build(
        request_id=call.request_id,
        user_id=call.user_id,
        task=call.task,
        config=candidate.config,
        provider_type=candidate.provider_type.value,
        model=model or candidate.endpoint.model,
        attempt=attempt,
        outcome=outcome,
        error_type=error_type,
        usage=usage,
        latency_ms=round(latency * 1000),
        streamed=streamed,
    )
    save = functools.partial(
        attempt_save_async, Attempt(row, reservation, candidate.config, known_failures=candidate.known_failures)
    )
    if after_response and call.after_response is not None:
        call.after_response.append(functools.partial(save, patient=True))
        return row
    return await shielded(save())


class Router:
    """Tries the candidates of one call in order; see the module docstring."""

    def __init__(
        self,
        call: TaskCall,
        candidates: list[Candidate],
        *,
        cooling: list[CandidateConfig] = (),
        over_limit: list[LimitExceeded] = (),
        first_reservation: Reservation | None = None,
    ):
        self.call = call
        self.queue: deque[Candidate] = deque(candidates)
        self.cooling = list(cooling)
        self.over_limit: list[LimitExceeded] = list(over_limit)
        self.errors: list[tuple[Candidate, ProviderError]] = []
        self.invalid: list[str] = []  # structured outputs that failed validation, as "<candidate>: <problem>"
        # request_prepare already reserved for the first candidate.
        self._first_reserved = bool(candidates)
        self._first_reservation = first_reservation

    @classmethod
    def for_task(cls, call: TaskCall, spec: TaskSpec, prepared: Prepared) -> Router:
        """A router over the candidates `request_prepare` found, or over the environment fallback when no config
        serves the task at all."""
        if not (prepared.ready or prepared.cooling or prepared.over_limit):
            fallback = environment_candidate(spec)
            if fallback is None:
                raise TaskError(
                    503,
                    "no_provider",
                    f"No provider is configured for the task {_task_label(spec.task)}: a super-admin must "
                    "enable a provider configuration for it (or set GEMINI_API_KEY for the fallback).",
                    task=spec.task,
                )
            return cls(call, [fallback])
        return cls(
            call,
            [Candidate.for_config(candidate) for candidate in prepared.ready],
            cooling=prepared.cooling,
            over_limit=prepared.over_limit,
            first_reservation=prepared.first_reservation,
        )

    async def _next(self, request: GenerateRequest) -> tuple[Candidate, Reservation | None] | None:
        """The next candidate with its tokens reserved; None when none is left."""
        if self._first_reserved:
            self._first_reserved = False
            return self.queue.popleft(), self._first_reservation
        estimate = estimate_tokens(request)
        while self.queue:
            candidate = self.queue.popleft()
            if not candidate.has_limits:
                return candidate, None
            call = self.call
            hold = Hold(
                request_id=call.request_id,
                user_id=call.user_id,
                task=call.task,
                model=candidate.endpoint.model,
                attempt=call.attempts + 1,
                input_tokens=estimate - request.max_output_tokens,
            )
            try:
                return candidate, await tokens_reserve_async(config=candidate.config, tokens=estimate, hold=hold)
            except LimitExceeded as refusal:
                self.over_limit.append(refusal)
        return None

    async def _failed(
        self,
        candidate: Candidate,
        reservation: Reservation | None,
        error: ProviderError,
        *,
        attempt: int,
        latency: float,
        usage: TokenUsage | None = None,
        streamed: bool = False,
    ) -> None:
        self.errors.append((candidate, error))
        await record(
            self.call,
            candidate,
            reservation,
            attempt=attempt,
            outcome=Outcome.ERROR,
            error_type=error.error_type.value,
            usage=usage,
            latency=latency,
            streamed=streamed,
        )
        if error.error_type == ErrorType.LOCAL:
            raise TaskError(
                500,
                "local_error",
                f"aditus could not build the request for {candidate.name} ({error.message}), so nothing was sent. "
                "This is a fault of aditus, not of the provider or the request.",
                error_type=error.error_type.value,
            )
        if not error.fallback_ok:
            raise TaskError(
                422,
                "provider_rejected_request",
                f"{candidate.name} refused the request as invalid ({error.message}). No other provider was "
                "tried: the same request would be refused there too.",
                error_type=error.error_type.value,
            )

    async def _aborted(
        self,
        candidate: Candidate,
        reservation: Reservation | None,
        *,
        attempt: int,
        latency: float,
        usage: TokenUsage | None,
        streamed: bool,
    ) -> None:
        await record(
            self.call,
            candidate,
            reservation,
            attempt=attempt,
            outcome=Outcome.ABORTED,
            usage=usage,
            latency=latency,
            streamed=streamed,
        )

    async def generate(self, request: GenerateRequest, output: OutputSchema | None = None) -> Served:
        """Get one answer, falling back as needed; raise TaskError when no candidate gives one."""
        call = self.call
        invalid = self.invalid
        while (chosen := await self._next(request)) is not None:
            candidate, reservation = chosen
            call.attempts += 1
            attempt = call.attempts
            started = time.perf_counter()
            try:
                result = await get_client(candidate.provider_type).agenerate(
                    candidate.endpoint, request, api_key=candidate.api_key()
                )
            except ProviderError as error:
                latency = time.perf_counter() - started
                call.provider_seconds += latency
                await self._failed(candidate, reservation, error, attempt=attempt, latency=latency)
                continue
            except asyncio.CancelledError:
                # The client went away: the provider may still bill the call; its usage is unknown.
                latency = time.perf_counter() - started
                await self._aborted(
                    candidate, reservation, attempt=attempt, latency=latency, usage=None, streamed=False
                )
                raise
            latency = time.perf_counter() - started
            call.provider_seconds += latency
            value: Any = result.text
            if output is not None:
                try:
                    value = output.parse(result.text)
                except OutputInvalid as problem:
                    invalid.append(f"{candidate.name}: {problem}")
                    await record(
                        call,
                        candidate,
                        reservation,
                        attempt=attempt,
                        outcome=Outcome.INVALID_OUTPUT,
                        usage=result.usage,
                        latency=latency,
                        model=result.model,
                    )
                    if len(invalid) >= 2:
                        raise TaskError(
                            502,
                            "invalid_output",
                            "The provider's answer did not match the output schema twice in a row, so there is "
                            f"no result: {'; '.join(invalid)}.",
                        ) from None
                    if not self.queue:
                        self.queue.append(candidate)  # no other candidate left: the retry goes to the same one
                    continue
            served = await record(
                call,
                candidate,
                reservation,
                attempt=attempt,
                outcome=Outcome.SUCCESS,
                usage=result.usage,
                latency=latency,
                model=result.model,
                after_response=True,
            )
            return Served(candidate=candidate, result=result, value=value, record=served)
        raise self.exhausted()

    async def open_stream(self, request: GenerateRequest) -> OpenStream:
        """Open a stream and read its first event, falling back as needed until one does."""
        call = self.call
        while (chosen := await self._next(request)) is not None:
            candidate, reservation = chosen
            call.attempts += 1
            attempt = call.attempts
            started = time.perf_counter()
            stream = None
            try:
                stream = get_client(candidate.provider_type).astream(
                    candidate.endpoint, request, api_key=candidate.api_key()
                )
                first = await anext(stream, None)
                if first is None:
                    raise MalformedResponseError(f"{candidate.name}: the stream ended before any event")
            except ProviderError as error:
                latency = time.perf_counter() - started
                call.provider_seconds += latency
                if stream is not None:
                    await stream.aclose()
                await self._failed(candidate, reservation, error, attempt=attempt, latency=latency, streamed=True)
                continue
            except asyncio.CancelledError:
                latency = time.perf_counter() - started
                if stream is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(stream.aclose())
                await self._aborted(
                    candidate,
                    reservation,
                    attempt=attempt,
                    latency=latency,
                    usage=stream.partial_usage() if stream is not None else None,
                    streamed=True,
                )
                raise
            call.provider_seconds += time.perf_counter() - started
            return OpenStream(candidate, stream, first, reservation, attempt, started)
        raise self.exhausted()

    def exhausted(self) -> TaskError:
        """The error when no candidate answered: over limits (429), cooling down (503), or failed (502/504)."""
        call = self.call
        label = _task_label(call.task)
        if self.invalid and not self.errors:
            # The retry after an invalid output found no candidate to run on (over limits).
            return TaskError(
                502,
                "invalid_output",
                f"The provider's answer did not match the output schema ({'; '.join(self.invalid)}), and no "
                "provider was left to retry it.",
            )
        if not self.errors:
            if self.over_limit:
                retry_at = min(refusal.retry_at() for refusal in self.over_limit)
                resets_at = min(refusal.resets_at for refusal in self.over_limit)
                when = (
                    "Calls in flight hold the room; try again in a few seconds."
                    if any(refusal.in_flight for refusal in self.over_limit)
                    else f"The earliest limit resets at {_iso(resets_at)}."
                )
                return TaskError(
                    429,
                    "token_limit_reached",
                    f"Every provider for the task {label} is over its token limit: "
                    f"{'; '.join(refusal.message for refusal in self.over_limit)}. {when}",
                    headers={"Retry-After": _seconds_until(retry_at)},
                    resets_at=_iso(resets_at),
                )
            until = min((candidate.cooling_until for candidate in self.cooling), default=None)
            back = f" The first is back at {_iso(until)}." if until else ""
            return TaskError(
                503,
                "providers_cooling_down",
                f"Every provider for the task {label} is cooling down after repeated failures.{back}",
                headers={"Retry-After": _seconds_until(until)} if until else None,
            )
        candidate, last = self.errors[-1]
        timed_out = all(error.error_type == ErrorType.TIMEOUT for _, error in self.errors)
        skipped = f" ({len(self.over_limit)} more over their token limit)" if self.over_limit else ""
        return TaskError(
            504 if timed_out else 502,
            "providers_timed_out" if timed_out else "providers_failed",
            f"Every provider tried for the task {label} failed{skipped}: {len(self.errors)} attempt(s). "
            f"The last, {candidate.name}, failed with {last.error_type.value}: {last.message}",
            last_error_type=last.error_type.value,
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _seconds_until(moment: datetime) -> str:
    return str(max(1, math.ceil((moment - timezone.now()).total_seconds())))
