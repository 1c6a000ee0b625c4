"""The threads that run the task views' database work (tasks.services.DatabaseThreads)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from tasks.services import DatabaseThreads

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


@pytest.fixture
def threads():
    pool = DatabaseThreads(2)
    yield pool
    pool.shutdown()


def test_a_job_runs_in_another_thread_with_the_callers_context_and_returns_its_result(threads):
    def job(*, add):
        return threading.current_thread().name, marker.get(), 40 + add

    async def scenario():
        marker.set("request-7")
        return await threads.submit(job, {"add": 2})

    name, seen, result = asyncio.run(scenario())

    assert name.startswith("aditus-db-") and seen == "request-7" and result == 42


def test_a_jobs_exception_reaches_the_caller(threads):
    def job():
        raise LookupError("no such row")

    async def scenario():
        await threads.submit(job, {})

    with pytest.raises(LookupError, match="no such row"):
        asyncio.run(scenario())


def test_a_job_cancelled_before_a_thread_takes_it_does_not_run(threads):
    release = threading.Event()
    ran: list[str] = []

    async def scenario():
        busy = [threads.submit(release.wait, {}) for _ in range(2)]  # both threads held
        waiting = threads.submit(lambda: ran.append("late"), {})
        waiting.cancel()
        release.set()
        await asyncio.gather(*busy)
        await threads.submit(lambda: ran.append("next"), {})  # the queue has moved past the cancelled job

    asyncio.run(scenario())

    assert ran == ["next"]
