"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

_T = TypeVar("_T")

# Tasks started by `shielded`, until they end: the loop holds tasks only weakly.
_running: set[asyncio.Task] = set()


async def shielded(work: Awaitable[_T]) -> _T:
    """Await `work` in a task of its own that runs to its end even if the caller is cancelled (the caller then
    gets its `CancelledError` at once; the work goes on)."""
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return await asyncio.shield(task)


def when_loop_closes(close: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    """Have `await close()` run when the running event loop shuts down; return the object the caller must keep
    (the loop holds it weakly) for as long as that should happen.

    It is an async generator, started to its `yield` here: `asyncio.run` (and so uvicorn and asgiref's
    `async_to_sync`) closes every such generator in `loop.shutdown_asyncgens()` while the loop still runs, which
    runs the `finally`. For what belongs to one loop (sockets, connections) and must not outlive it.
    """

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await close()

    generator = closer()
    step = generator.asend(None)
    try:
        step.send(None)
    except StopIteration:
        return generator
    raise RuntimeError("the generator awaited before its first yield")
