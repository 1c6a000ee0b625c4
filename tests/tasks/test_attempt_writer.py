"""tasks.services.AttemptWriter: the attempts of concurrent requests are saved together, each answered alone."""

import asyncio

import pytest

from tasks import services


@pytest.fixture
def batches(monkeypatch):
    """Stand in for tasks.services.attempts_finish (run in the database threads): note each batch, fail the
    attempts whose record is "bad", return the others' records."""
    seen: list[list[str]] = []

    def attempts_finish(*, attempts):
        seen.append([attempt["record"] for attempt in attempts])
        return [ValueError(f"cannot save {a['record']}") if a["record"] == "bad" else a["record"] for a in attempts]

    monkeypatch.setattr(services, "attempts_finish", attempts_finish)
    yield seen
    services.database_threads_shutdown()


def save(record: str):
    return services.attempt_finish_async(record=record, reservation=None, config=None)


def test_one_attempt_alone_is_written_at_once(batches):
    assert asyncio.run(save("a")) == "a"
    assert batches == [["a"]]


def test_attempts_that_wait_together_are_written_together_and_each_gets_its_own_answer(batches):
    async def main():
        first = asyncio.create_task(save("a"))
        await asyncio.sleep(0)  # the first write is under way
        rest = [asyncio.create_task(save(name)) for name in ("b", "bad", "c")]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    a, b, bad, c = asyncio.run(main())

    assert (a, b, c) == ("a", "b", "c")
    assert isinstance(bad, ValueError) and "cannot save bad" in str(bad)
    assert batches == [["a"], ["b", "bad", "c"]]


def test_a_write_that_fails_whole_fails_each_of_its_attempts(monkeypatch, batches):
    def attempts_finish(*, attempts):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "attempts_finish", attempts_finish)

    async def main():
        return await asyncio.gather(save("a"), save("b"), return_exceptions=True)

    results = asyncio.run(main())

    assert [type(result) for result in results] == [RuntimeError, RuntimeError]


def test_a_big_burst_is_written_in_bounded_batches(monkeypatch, batches):
    monkeypatch.setattr(services.AttemptWriter, "MAX_ATTEMPTS_PER_WRITE", 3)

    async def main():
        return await asyncio.gather(*(save(str(number)) for number in range(8)))

    assert asyncio.run(main()) == [str(number) for number in range(8)]
    assert [len(batch) for batch in batches] == [3, 3, 2]
