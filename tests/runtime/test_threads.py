"""runtime.threads: the request path's sync work, in a pool of threads."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from runtime import threads

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


@pytest.fixture(autouse=True)
def _fresh_pool():
    threads.shutdown()
    yield
    threads.shutdown()


def test_a_job_runs_in_another_thread_with_the_callers_context_and_returns_its_result():
    def job(add):
        return threading.current_thread().name, marker.get(), 40 + add

    async def scenario():
        marker.set("request-7")
        return await threads.run_in_thread(job, 2)

    name, seen_marker, answer = asyncio.run(scenario())

    assert name.startswith("aditus-db") and name != threading.current_thread().name
    assert (seen_marker, answer) == ("request-7", 42)


def test_a_jobs_exception_reaches_the_caller():
    def job():
        raise LookupError("nothing here")

    async def scenario():
        return await threads.run_in_thread(job)

    with pytest.raises(LookupError, match="nothing here"):
        asyncio.run(scenario())


def test_the_pool_has_the_configured_number_of_threads_and_one_on_sqlite(settings):
    from django.db import connection

    settings.DB_THREADS = 3
    expected = 1 if connection.vendor == "sqlite" else 3
    seen: set[str] = set()
    barrier = threading.Barrier(expected, timeout=5)

    def job():
        seen.add(threading.current_thread().name)
        barrier.wait()

    async def scenario():
        await asyncio.gather(*(threads.run_in_thread(job) for _ in range(expected)))

    asyncio.run(scenario())

    assert len(seen) == expected
