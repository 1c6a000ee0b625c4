"""The thread pool for the sync work of the request path: a session lookup, and every statement on SQLite."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections

_T = TypeVar("_T")

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The process's pool: settings.DB_THREADS threads, started as needed, each keeping its own connection; one
    on SQLite, which lets one writer in at a time anyway (and whose shared-cache databases fail a second one at
    once with "database table is locked" instead of waiting)."""
    global _executor
    if _executor is None:
        sqlite = connections[DEFAULT_DB_ALIAS].vendor == "sqlite"
        size = 1 if sqlite else settings.DB_THREADS
        _executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="aditus-db")
    return _executor


def _job(function: Callable[..., _T], args: tuple, kwargs: dict[str, Any]) -> _T:
    # A connection that broke, or passed CONN_MAX_AGE, is replaced before the job, never reused: the work
    # Django's request_started/finished signals do for code in a request's own thread.
    close_old_connections()
    return function(*args, **kwargs)


async def run_in_thread(function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """`function(*args, **kwargs)` in the pool, in a copy of the caller's context (the request id)."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, _job, function, args, kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor(), call)


def shutdown() -> None:
    """Stop the pool's threads (their database connections close with them, once collected). For tests."""
    global _executor
    pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=True)
