"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
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
