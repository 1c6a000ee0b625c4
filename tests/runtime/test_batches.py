"""runtime.batches.Batches: the work of concurrent requests goes in shared batches, each answered alone."""

import asyncio

import pytest

from runtime.batches import Batches, loop_batches


@pytest.fixture
def seen():
    """The batches a stand-in function was given."""
    return []


def stand_in(seen):
    async def function(items):
        seen.append(list(items))
        await asyncio.sleep(0.005)  # a trip to the database
        return [ValueError(f"cannot do {item}") if item == "bad" else item.upper() for item in items]

    return function


def test_one_item_alone_is_run_at_once(seen):
    batches = Batches(stand_in(seen), max_in_flight=1)

    assert asyncio.run(batches.run("a")) == "A"
    assert seen == [["a"]]


def test_items_that_wait_together_go_together_and_each_gets_its_own_answer(seen):
    batches = Batches(stand_in(seen), max_in_flight=1)

    async def main():
        first = asyncio.create_task(batches.run("a"))
        await asyncio.sleep(0)  # the first batch is under way
        rest = [asyncio.create_task(batches.run(item)) for item in ("b", "bad", "c")]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    a, b, bad, c = asyncio.run(main())

    assert (a, b, c) == ("A", "B", "C")
    assert isinstance(bad, ValueError) and "cannot do bad" in str(bad)
    assert seen == [["a"], ["b", "bad", "c"]]


def test_several_batches_may_run_at_once(seen):
    batches = Batches(stand_in(seen), max_in_flight=3)

    async def main():
        return await asyncio.gather(*(batches.run(item) for item in "abcde"))

    assert asyncio.run(main()) == list("ABCDE")
    assert sorted(item for batch in seen for item in batch) == list("abcde")
    assert len(seen) <= 3


def test_a_batch_that_fails_whole_fails_each_of_its_items(seen):
    async def function(items):
        raise RuntimeError("database went away")

    batches = Batches(function, max_in_flight=1)

    async def main():
        return await asyncio.gather(batches.run("a"), batches.run("b"), return_exceptions=True)

    assert [type(answer) for answer in asyncio.run(main())] == [RuntimeError, RuntimeError]


def test_a_big_burst_goes_in_bounded_batches_after_the_first_which_goes_at_once(seen):
    batches = Batches(stand_in(seen), max_in_flight=1, max_items=3)

    async def main():
        return await asyncio.gather(*(batches.run(str(number)) for number in range(8)))

    assert asyncio.run(main()) == [str(number) for number in range(8)]
    assert [len(batch) for batch in seen] == [1, 3, 3, 1]


def test_an_item_whose_caller_went_away_before_its_turn_is_not_run(seen):
    batches = Batches(stand_in(seen), max_in_flight=1)

    async def main():
        first = asyncio.create_task(batches.run("a"))
        await asyncio.sleep(0)  # the first batch is under way
        gone = asyncio.create_task(batches.run("gone"))
        kept = asyncio.create_task(batches.run("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(first, kept)

    assert asyncio.run(main()) == ["A", "KEPT"]
    assert seen == [["a"], ["kept"]]


def test_patient_items_wait_for_company_and_go_in_one_batch(seen):
    batches = Batches(stand_in(seen), max_in_flight=1, linger=0.05)

    async def main():
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = asyncio.create_task(batches.run("a", patient=True))
        await asyncio.sleep(0.01)  # no overlap with the first: without the linger, two batches
        second = asyncio.create_task(batches.run("b", patient=True))
        answers = await asyncio.gather(first, second)
        return answers, loop.time() - started

    answers, took = asyncio.run(main())

    assert answers == ["A", "B"]
    assert seen == [["a", "b"]]
    assert took >= 0.05


def test_an_item_that_may_not_wait_cuts_the_linger_short(seen):
    batches = Batches(stand_in(seen), max_in_flight=1, linger=30)

    async def main():
        patient = asyncio.create_task(batches.run("a", patient=True))
        await asyncio.sleep(0.01)
        return await asyncio.wait_for(asyncio.gather(patient, batches.run("b")), timeout=5)

    assert asyncio.run(main()) == ["A", "B"]
    assert seen == [["a", "b"]]


def test_a_full_batch_does_not_linger(seen):
    batches = Batches(stand_in(seen), max_in_flight=1, max_items=2, linger=30)

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(batches.run(item, patient=True) for item in "abc")), timeout=5)

    assert asyncio.run(main()) == ["A", "B", "C"]
    assert seen == [["a", "b"], ["c"]]


def test_after_a_hurried_batch_the_next_patient_one_lingers_again(seen):
    batches = Batches(stand_in(seen), max_in_flight=1, linger=0.05)

    async def main():
        await batches.run("now")
        first = asyncio.create_task(batches.run("a", patient=True))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batches.run("b", patient=True))
        return await asyncio.gather(first, second)

    assert asyncio.run(main()) == ["A", "B"]
    assert seen == [["now"], ["a", "b"]]


def test_an_item_that_comes_as_the_last_batch_ends_is_run(seen):
    # The caller of the last item resumes before the finished batch's task is out of the way: an item it sends
    # then must start a batch of its own, not wait for one that is over.
    batches = Batches(stand_in(seen), max_in_flight=1)

    async def one_after_the_other():
        first = await batches.run("a")
        return first, await batches.run("b")

    assert asyncio.run(asyncio.wait_for(one_after_the_other(), timeout=5)) == ("A", "B")
    assert seen == [["a"], ["b"]]


def test_each_event_loop_has_its_own_batches(seen):
    def make():
        return Batches(stand_in(seen), max_in_flight=1)

    async def twice():
        return loop_batches("stand-in", make), loop_batches("stand-in", make)

    first, again = asyncio.run(twice())
    other, _ = asyncio.run(twice())

    assert first is again and other is not first


def test_an_item_alone_runs_in_its_callers_own_task(seen):
    tasks_seen = []

    async def function(items):
        tasks_seen.append(asyncio.current_task())
        return [item.upper() for item in items]

    batches = Batches(function, max_in_flight=1)

    async def main():
        answer = await batches.run("a")
        return answer, asyncio.current_task()

    answer, caller = asyncio.run(main())

    assert answer == "A" and tasks_seen == [caller]
