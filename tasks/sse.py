"""Server-Sent Events for streamed drafts and letters.

    event: delta   data: {"text": "..."}                 as the provider produces text
    event: done    data: {"provider", "usage", "cost_usd", "priced", "attempts", "request_id", "gateway_time_ms"}
    event: error   data: {"error": {"type", "message"}, "attempts", "request_id"}   a failure after deltas were sent

Fallback happens before the first byte (see `Router.open_stream`); once deltas have gone out, a provider failure
ends the stream with an `error` event. A client that goes away mid-stream still leaves a usage row (outcome
`aborted`, the tokens consumed so far). Under WSGI (`manage.py runserver`) the events are read to the end in the
view and sent in one body (`buffered_response`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse

from providers.clients.base import MalformedResponseError, ProviderError, StreamEnd, TextDelta
from tasks.responses import cost_text, dumps, usage_dict
from tasks.router import OpenStream, TaskCall, record
from usage.models import Outcome

CONTENT_TYPE = "text/event-stream; charset=utf-8"
logger = logging.getLogger(__name__)


class EventStream:
    """The body of a streamed answer: the opened stream's deltas, then `done` (or `error`); the attempt is
    recorded exactly once, whichever way the stream ends.

    A client that goes away is seen in one of three ways, all ending in `abandon()` (close the provider stream,
    record `aborted` with the tokens consumed so far): Django's ASGI handler cancels the response task while the
    body awaits the provider (a CancelledError in `events`); the task is cancelled while `send` is blocked, and
    `EventStreamResponse.close` closes the suspended generator (GeneratorExit); or it goes before the body was
    started, and `close` calls `abandon()` itself.
    """

    def __init__(self, call: TaskCall, opened: OpenStream):
        self.call = call
        self.opened = opened
        self.finished = False  # set before recording, so a cancellation mid-record cannot record twice

    async def _record(self, outcome: str, *, error_type: str = "", model: str | None = None, usage=None):
        self.finished = True
        opened = self.opened
        return await record(
            self.call,
            opened.candidate,
            opened.reservation,
            attempt=opened.attempt,
            outcome=outcome,
            error_type=error_type,
            usage=usage if usage is not None else opened.stream.partial_usage(),
            latency=time.perf_counter() - opened.opened,
            model=model,
            streamed=True,
        )

    async def abandon(self) -> None:
        """Stop the provider and record what it consumed; nothing if the attempt is already recorded."""
        if self.finished:
            return
        self.finished = True
        # The stream is being abandoned: an error while closing it no longer matters.
        with contextlib.suppress(Exception):
            await asyncio.shield(self.opened.stream.aclose())
        await self._record(Outcome.ABORTED)

    async def events(self) -> AsyncIterator[bytes]:
        call, opened = self.call, self.opened
        stream, candidate, current = opened.stream, opened.candidate, opened.first
        try:
            try:
                while isinstance(current, TextDelta):
                    if current.text:
                        yield event("delta", {"text": current.text})
                    waited = time.perf_counter()
                    try:
                        current = await anext(stream, None)
                    finally:
                        call.provider_seconds += time.perf_counter() - waited
                if not isinstance(current, StreamEnd):
                    raise MalformedResponseError(f"{candidate.name}: the stream ended without a result")
            except ProviderError as error:
                await self._record(Outcome.ERROR, error_type=error.error_type.value)
                yield event(
                    "error",
                    {
                        "error": {
                            "type": "provider_failed",
                            "message": f"{candidate.name} failed mid-stream with {error.error_type.value}: "
                            f"{error.message}. The text sent so far is incomplete.",
                            "error_type": error.error_type.value,
                        },
                        "attempts": call.attempts,
                        "request_id": call.request_id,
                    },
                )
                return
            result = current.result
            try:
                usage_record = await self._record(Outcome.SUCCESS, model=result.model, usage=result.usage)
            except Exception:
                # Headers have gone out, so there is no 500 to send: say so in the stream rather than cut it.
                logger.exception("recording the streamed attempt of request %s failed", call.request_id)
                yield event(
                    "error",
                    {
                        "error": {
                            "type": "internal_error",
                            "message": "The answer is complete but could not be recorded.",
                        },
                        "attempts": call.attempts,
                        "request_id": call.request_id,
                    },
                )
                return
            yield event(
                "done",
                {
                    "provider": provider_dict(opened, result.model),
                    "usage": usage_dict(result.usage),
                    "cost_usd": cost_text(usage_record.cost_usd),
                    "priced": usage_record.priced,
                    "finish_reason": result.finish_reason,
                    "attempts": call.attempts,
                    "request_id": call.request_id,
                    "gateway_time_ms": round(call.gateway_ms(), 3),
                },
            )
        finally:
            await self.abandon()


async def buffered_response(body: EventStream) -> HttpResponse:
    """The whole event stream in one response, for a server that is not ASGI (`manage.py runserver`, a WSGI
    server). There an async view runs in an event loop of its own that ends when the view returns, taking the
    provider's open stream with it, so the events cannot be read later, as the body is sent: they are read to the
    end here. The client gets the same events, all at once."""
    chunks = [chunk async for chunk in body.events()]
    response = HttpResponse(b"".join(chunks), content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-cache"
    return response


class EventStreamResponse(StreamingHttpResponse):
    """The streaming response of an `EventStream`, which it finishes when Django closes the response.

    Django's ASGI handler closes the response, not its iterator: without this, a body left suspended at a
    `yield` (or never started) would be cleaned up only when garbage-collected.
    """

    def __init__(self, body: EventStream):
        self._body = body
        self._events = body.events()
        super().__init__(self._events, content_type=CONTENT_TYPE)
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come
        self._loop = asyncio.get_running_loop()

    def close(self) -> None:
        super().close()
        # Django calls this from a worker thread. After a complete stream, both steps below do nothing.
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_finish_soon, self._events, self._body)


# The loop keeps only weak references to tasks: these keep the finishing ones alive until they are done.
_finishing: set[asyncio.Task] = set()


async def _finish(events: AsyncGenerator[bytes, None], body: EventStream) -> None:
    await events.aclose()  # a generator suspended at a yield runs its `finally` now
    await body.abandon()  # one that never started has none to run


def _finish_soon(events: AsyncGenerator[bytes, None], body: EventStream) -> None:
    task = asyncio.ensure_future(_finish(events, body))
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def provider_dict(opened: OpenStream, model: str) -> dict[str, Any]:
    candidate = opened.candidate
    return {
        "type": candidate.provider_type.value,
        "config_id": candidate.config_id,
        "name": candidate.name,
        "model": model,
    }
