"""Work of many requests in one trip (`Batches`)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any


class Batches:
    """Runs a coroutine function over batches of items, for the coroutines of one event loop: at most
    `max_in_flight` batches at a time, and the items that come in meanwhile all in the next one, as a database
    groups commits.

    One item alone waits as long as it would without batching (its batch starts at once). Many at a time share
    one trip: a round trip, a commit and one lock of each row they all update (the rollups, a config's token
    counters) instead of one each.

    With `linger`, a batch of `patient` items (work nobody waits for, such as a usage row saved after its
    response) first waits up to `linger` seconds for company, so that a few calls share a trip even when they
    do not overlap; an item that is not patient, or a full batch, starts it at once.
    """

    def __init__(
        self,
        function: Callable[[list], Awaitable[list]],
        *,
        max_in_flight: int,
        max_items: int = 100,
        linger: float = 0.0,
    ):
        # items -> one answer (or exception) per item, in order
        self._function = function
        self.max_in_flight, self.max_items = max_in_flight, max_items
        self.linger = linger
        self._waiting: list[tuple[Any, asyncio.Future]] = []
        self._in_flight: set[asyncio.Task] = set()  # the loop itself keeps only a weak reference to a task
        self._draining = 0  # batches under way: counted down as a drain ends, not when its task's callbacks run
        self._hurry = False  # an item that may not wait is waiting, or a batch is full: no lingering
        self._lingering: asyncio.Future | None = None  # what a lingering batch awaits, to cut it short

    async def run(self, item: Any, *, patient: bool = False) -> Any:
        """Run `item` in a batch; return its answer, or raise the exception the function gave for it. A
        `patient` item may wait up to `linger` for others to join its batch."""
        if not patient and not self._draining and not self._waiting:
            return await self._run_alone(item)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not patient or len(self._waiting) >= self.max_items:
            self._hurry = True
            if self._lingering is not None and not self._lingering.done():
                self._lingering.set_result(None)
        if self._draining < self.max_in_flight:
            self._draining += 1
            task = asyncio.create_task(self._drain())
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return await future

    async def _run_alone(self, item: Any) -> Any:
        """Nothing under way and nobody waiting: run `item` in the caller's own task, a batch of one (no task
        and no future to make, the common case at low load); items that come meanwhile wait for it to end."""
        self._draining += 1
        try:
            [answer] = await self._function([item])
        finally:
            self._draining -= 1
            if self._waiting and self._draining < self.max_in_flight:
                self._draining += 1
                task = asyncio.create_task(self._drain())
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def _drain(self) -> None:
        # Counted down here, the moment no item is left: the callers of the last batch resume before a done
        # callback of this task would run, and an item one of them sends then must start a drain of its own.
        try:
            await self._drain_waiting()
        finally:
            self._draining -= 1

    async def _drain_waiting(self) -> None:
        if self.linger and not self._hurry:
            try:
                await self._company()
            except asyncio.CancelledError:
                self._abandon([])
                raise
        while self._waiting:
            batch = [waiting for waiting in self._waiting[: self.max_items] if not waiting[1].cancelled()]
            del self._waiting[: self.max_items]
            if not self._waiting:
                self._hurry = False
            if not batch:  # every caller went away before its turn: nothing to do for them
                continue
            try:
                answers = await self._function([item for item, _ in batch])
            except asyncio.CancelledError:
                self._abandon(batch)
                raise
            except Exception as error:  # noqa: BLE001 - each waiting caller gets it
                answers = [error] * len(batch)
            if len(answers) != len(batch):
                answers = [RuntimeError(f"{len(answers)} answers for a batch of {len(batch)}")] * len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    async def _company(self) -> None:
        """Wait `linger` seconds, or less if `run` hurries the batch."""
        loop = asyncio.get_running_loop()
        self._lingering = lingering = loop.create_future()
        timer = loop.call_later(self.linger, _set_done, lingering)
        try:
            await lingering
        finally:
            timer.cancel()
            self._lingering = None

    def _abandon(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        """The loop is going away (the callers' saves are shielded): nobody is left to answer."""
        for _, future in (*batch, *self._waiting):
            future.cancel()
        self._waiting.clear()
        self._hurry = False


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


_per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> {name: Batches}


def loop_batches(name: str, make: Callable[[], Batches]) -> Batches:
    """The running loop's `Batches` called `name`, made by `make()` on first use (a batch belongs to one loop)."""
    found = _per_loop.setdefault(asyncio.get_running_loop(), {})
    batches = found.get(name)
    if batches is None:
        batches = found[name] = make()
    return batches
