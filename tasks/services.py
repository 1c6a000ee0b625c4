"""The database work of one task request, in three sync functions the async views run in the thread pool.

    request_prepare  authenticate, read the input, load the candidate configs with their cooldowns, and
                     reserve tokens for the first candidate
    tokens_hold      reserve tokens for a fallback candidate (nothing to do for configs without limits)
    attempts_finish  save attempts' costed rows and settle their reservations

The first and the last run in batches (`Batches`): the requests that wait at the same time share their trips.
On PostgreSQL a bearer-token request is prepared from the event loop itself instead (`requests_prepare_on_loop`,
over the loop's own connections, see `aditus.db`): no thread, and no wait for the GIL that a thread's job needs
after each answer from the database.

So a request the first candidate serves makes one trip to the thread pool, to record (on the lean ASGI path,
after the response has gone: see `tasks.router.record`), or two with a session.

Each runs in the event loop's database thread pool (`in_thread`, settings.DB_THREADS threads), where every thread
keeps its own persistent connection and closes it before a job if it is broken or past CONN_MAX_AGE, the
request_started/finished signals' job for code outside the request thread. None of them holds
a transaction or a connection across a provider call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import psycopg
from django.conf import settings
from django.contrib.auth import get_user
from django.db import DatabaseError, close_old_connections, connection, connections
from django.middleware.csrf import CsrfViewMiddleware

from aditus.authentication import InvalidBearerToken, bearer_token_secret, bearer_token_user, token_query, token_user
from aditus.db import (
    LOOP_CONNECTIONS,
    answer_or_error,
    on_postgresql,
    results_in_one_message,
    results_in_one_message_async,
)
from providers.clients.base import GenerateRequest
from providers.models import ProviderConfig
from tasks.responses import TaskError
from tasks.selectors import (
    CandidateConfig,
    candidate_configs,
    candidates_from_rows,
    candidates_query,
    estimate_tokens,
    weighted_order,
)
from usage.models import UsageRecord
from usage.services import (
    RESERVE_IN_A_THREAD,
    LimitExceeded,
    Reservation,
    attempts_save,
    tokens_reserve,
    tokens_reserve_many,
    tokens_reserve_many_on_loop,
)

logger = logging.getLogger(__name__)

NOT_AUTHENTICATED = (
    "Authentication required: send 'Authorization: Bearer <token>' (a token from /api/v1/auth/token), "
    "or sign in for a session."
)

# Seconds a usage row saved after its response waits for other rows to share its write (`Batches`' linger).
ATTEMPTS_LINGER = 0.02


class _CsrfCheck(CsrfViewMiddleware):
    """Django's own CSRF check, answering with the reason instead of a 403 page (as DRF does for sessions)."""

    def _reject(self, request, reason):
        return reason


def _no_response(request):  # CsrfViewMiddleware needs a get_response; the check never calls it
    return None


def _csrf_view():  # any callable without `csrf_exempt`: the check reads only that attribute
    return None


_csrf_check = _CsrfCheck(_no_response)


def request_user(request):
    """Return the request's user by bearer token, else by session; raise TaskError 401/403 otherwise.

    Session users must pass Django's CSRF check: the views are csrf_exempt so that bearer-token clients
    need no CSRF token, and check it here for the session case.
    """
    header = request.META.get("HTTP_AUTHORIZATION")
    if header:
        with _token_errors():
            found = bearer_token_user(header)
        if found is not None:
            return found[0]
    return _session_user(request)


def _session_user(request):
    if not hasattr(request, "session"):
        # The task endpoints' stack has no SessionMiddleware (aditus.task_handler): read the session from its
        # cookie here, as SessionMiddleware would. Nothing on this path changes it, so nothing is saved back.
        engine = import_module(settings.SESSION_ENGINE)
        request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    user = get_user(request)  # the session, loaded only if the request has a session cookie
    if not user.is_authenticated:
        raise TaskError(401, "not_authenticated", NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    _csrf_check.process_request(request)
    reason = _csrf_check.process_view(request, _csrf_view, (), {})
    if reason:
        raise TaskError(403, "csrf_failed", f"CSRF check failed for this session request: {reason}.")
    return user


@contextlib.contextmanager
def _token_errors():
    try:
        yield
    except InvalidBearerToken as error:
        raise TaskError(
            401, "invalid_token", str(error), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None


def user_and_candidates(request, task: str) -> tuple[Any, list[CandidateConfig]]:
    """The request's user (as `request_user`) and the task's candidates (as `candidate_configs`).

    On PostgreSQL a bearer token and the candidates are read in one message (`aditus.db`), one round trip
    instead of two; the candidates are read even when the token is then refused, which costs nothing more.
    """
    if connection.vendor == "postgresql":
        secret = _bearer_secret(request)
        if secret is not None:
            token_rows, candidate_rows = results_in_one_message([token_query(secret), candidates_query(task)])
            user, _token = _token_row_user(secret, token_rows)
            return user, candidates_from_rows(candidate_rows)
    return request_user(request), candidate_configs(task)


def _bearer_secret(request) -> str | None:
    """The request's bearer token (no query); None without one; TaskError 401 for a malformed one."""
    header = request.META.get("HTTP_AUTHORIZATION")
    if not header:
        return None
    with _token_errors():
        return bearer_token_secret(header)


def _token_row_user(secret: str, token_rows: list[tuple], *, record_use: bool = True):
    """(user, token) of a bearer token from the rows of its `token_query` (`aditus.authentication.token_user`);
    TaskError 401 if it does not authenticate."""
    with _token_errors():
        return token_user(secret, row=token_rows[0] if token_rows else None, record_use=record_use)


@dataclass(slots=True)
class Prepared:
    """A request ready for the router: who asked, the input, the provider request, and the candidates."""

    user_id: int
    input: Any
    provider_request: GenerateRequest
    stream: bool
    ready: list[CandidateConfig]  # not cooling down, in the order to try them (priority, then weighted)
    cooling: list[CandidateConfig]
    over_limit: list[LimitExceeded] = field(default_factory=list)  # skipped while reserving for the first
    first_reservation: Reservation | None = None  # for ready[0], when it has limits


def request_prepare(
    *, request, task: str, read_input: Callable[[Any], Any], build: Callable[[Any], tuple[GenerateRequest, bool]]
) -> Prepared:
    """Authenticate, read and check the input, load the task's candidates and reserve tokens for the first one.

    Queries: the bearer token and the candidates (one message on PostgreSQL, plus a write once a minute; with
    a session, two for the session and one for the candidates), and the reservation when the first candidate
    has limits (one transaction, see `usage.services.tokens_reserve`).
    """
    return _prepared(request, *user_and_candidates(request, task), read_input, build)


def requests_prepare(*, jobs: list[dict[str, Any]]) -> list[Prepared | Exception]:
    """`request_prepare` for several requests (each given as its arguments); return, in order, each one's
    `Prepared` or the exception it raised (a `TaskError` for a refused token or bad input).

    On PostgreSQL the bearer tokens and the candidates of all of them are read in one message (each task's
    candidates once), and the first reservations made in another (`usage.services.tokens_reserve_many`).
    Requests with a session, and reservations refused, take `request_prepare`'s own path.
    """
    if connection.vendor != "postgresql" or len(jobs) < 2:
        return [answer_or_error(lambda job=job: request_prepare(**job)) for job in jobs]
    answers: list[Prepared | Exception | None] = [None] * len(jobs)
    secrets: dict[int, str] = {}  # position -> bearer token
    for position, job in enumerate(jobs):
        try:
            secret = _bearer_secret(job["request"])
        except TaskError as error:
            answers[position] = error
            continue
        if secret is None:
            answers[position] = answer_or_error(lambda job=job: request_prepare(**job))  # a session: its own path
        else:
            secrets[position] = secret
    if not secrets:
        return answers
    tasks = sorted({jobs[position]["task"] for position in secrets})
    read = results_in_one_message(
        [token_query(secret) for secret in secrets.values()] + [candidates_query(task) for task in tasks]
    )
    candidate_rows = dict(zip(tasks, read[len(secrets) :], strict=True))
    waiting: dict[int, tuple[Prepared, int]] = {}  # position -> (prepared, its estimate), to reserve for
    for (position, secret), token_rows in zip(secrets.items(), read, strict=False):
        job = jobs[position]

        answers[position] = prepared = answer_or_error(
            lambda job=job, secret=secret, token_rows=token_rows: _prepared_from_rows(
                job, secret, token_rows, candidate_rows[job["task"]]
            )
        )
        if isinstance(prepared, Prepared) and prepared.ready:
            waiting[position] = (
                prepared,
                estimate_tokens(prepared.provider_request, settings.TASK_IMAGE_TOKEN_ALLOWANCE),
            )
    try:
        reserved = tokens_reserve_many(
            [(prepared.ready[0].config, estimate) for prepared, estimate in waiting.values()]
        )
    except DatabaseError:
        # Rolled back whole, so nothing was reserved: each reserves on its own.
        for position, (prepared, estimate) in waiting.items():
            answers[position] = answer_or_error(
                lambda prepared=prepared, estimate=estimate: _reserve_first(prepared, estimate)
            )
        return answers
    for (position, (prepared, estimate)), reservation in zip(waiting.items(), reserved, strict=True):
        if isinstance(reservation, LimitExceeded):
            prepared.over_limit.append(reservation)
            prepared.ready.pop(0)
            answers[position] = answer_or_error(
                lambda prepared=prepared, estimate=estimate: _reserve_first(prepared, estimate)
            )
        elif isinstance(reservation, Exception):
            answers[position] = reservation
        else:
            prepared.first_reservation = reservation
    return answers


def _prepared_from_rows(
    job: dict[str, Any], secret: str, token_rows: list[tuple], candidate_rows: list[tuple], *, unrecorded=None
) -> Prepared:
    """A request's `Prepared` (without its reservation) from its token's rows and its task's candidate rows.
    With `unrecorded` (a list), a token whose use is due to be written is added to it instead of written here."""
    user, token = _token_row_user(secret, token_rows, record_use=unrecorded is None)
    if unrecorded is not None and not token.use_recorded():
        unrecorded.append(token)
    candidates = candidates_from_rows(candidate_rows)
    return _prepared(job["request"], user, candidates, job["read_input"], job["build"], reserve=False)


def _prepared(request, user, candidates, read_input, build, *, reserve: bool = True) -> Prepared:
    value = read_input(request)
    provider_request, stream = build(value)
    prepared = Prepared(
        user_id=user.pk,
        input=value,
        provider_request=provider_request,
        stream=stream,
        ready=weighted_order([candidate for candidate in candidates if candidate.cooling_until is None]),
        cooling=[candidate for candidate in candidates if candidate.cooling_until is not None],
    )
    if reserve:
        # Reserving here saves the router a trip to the thread pool in the common case.
        _reserve_first(prepared, estimate_tokens(provider_request, settings.TASK_IMAGE_TOKEN_ALLOWANCE))
    return prepared


def _reserve_first(prepared: Prepared, estimate: int) -> Prepared:
    """Reserve for the first ready candidate that has room, skipping (and noting) those over their limits."""
    while prepared.ready:
        config = prepared.ready[0].config
        try:
            prepared.first_reservation = tokens_reserve(config=config, tokens=estimate)
            break
        except LimitExceeded as refusal:
            prepared.over_limit.append(refusal)
            prepared.ready.pop(0)
    return prepared


def tokens_hold(*, config: ProviderConfig, tokens: int) -> Reservation | None:
    """Reserve `tokens` against the config's limits; raises `usage.services.LimitExceeded`."""
    return tokens_reserve(config=config, tokens=tokens)


def attempts_finish(*, attempts: list[dict[str, Any]]) -> list[UsageRecord | Exception]:
    """Save attempts' rows from `usage.services.attempt_build`, settling their reservations and noting their
    configs' health; each attempt is the arguments of `usage.services.attempt_save` (see `attempts_save`)."""
    return attempts_save(attempts)


# One pool of threads per process for the views' database work (settings.DB_THREADS threads), started on first
# use. Each thread keeps its own database connection. Not the loop's default executor (min(32, CPUs + 4) threads:
# 6 on two cores, too few when some wait on a locked row), not asgiref's sync_to_async, whose bookkeeping costs more
# CPU than the hop itself, and not a ThreadPoolExecutor: its `concurrent.futures.Future` (a Condition each), the
# idle-thread semaphore and the chaining to an asyncio future were ~30 µs of CPU per hop, two hops per call.
# Here a job is a queue entry, and its result goes straight to the caller's asyncio future.
class DatabaseThreads:
    """Threads that run sync functions for coroutines; see `in_thread`."""

    def __init__(self, size: int):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"aditus-db-{number}", daemon=True) for number in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> asyncio.Future:
        """Run `function(**kwargs)` in a thread, in a copy of the caller's context; its result or exception comes
        back in the returned future of the running loop. A job whose future is cancelled before a thread takes it
        does not run."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, contextvars.copy_context(), function, kwargs))
        return future

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                loop, future, context, function, kwargs = job
                if future.cancelled():
                    continue
                try:
                    # This thread's connection, if broken or past CONN_MAX_AGE, goes before each job: the
                    # request_started/finished signals' job, for code outside the request thread.
                    close_old_connections()
                    result = context.run(function, **kwargs)
                except BaseException as error:  # noqa: BLE001 - handed to the caller, as a thread pool would
                    _settle(loop, future, error, failed=True)
                else:
                    _settle(loop, future, result, failed=False)
        finally:
            connections.close_all()  # this thread's connections go with it


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, value: Any, *, failed: bool) -> None:
    def done() -> None:
        if future.cancelled():  # the caller went away meanwhile: nobody wants the result
            return
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
        loop.call_soon_threadsafe(done)


_threads: DatabaseThreads | None = None
_threads_lock = threading.Lock()


def database_threads() -> DatabaseThreads:
    global _threads
    if _threads is None:
        with _threads_lock:
            if _threads is None:
                _threads = DatabaseThreads(settings.DB_THREADS)
    return _threads


def database_threads_shutdown() -> None:
    """Stop the threads, closing their database connections. For tests."""
    global _threads
    with _threads_lock:
        threads, _threads = _threads, None
    if threads is not None:
        threads.shutdown()


def in_thread(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """An async face of a sync function: runs it in the database threads, in a copy of the caller's context (the
    request id). Like sync_to_async(thread_sensitive=False): cancelling the caller abandons the result, and a job
    that has not started yet does not run."""

    async def run(**kwargs: Any) -> Any:
        return await database_threads().submit(function, kwargs)

    run.__name__ = run.__qualname__ = f"{function.__name__}_async"
    return run


class Batches:
    """Runs a sync function over batches of items in the database threads, for the coroutines of one event loop:
    at most `max_in_flight` batches at a time, and the items that come in meanwhile all in the next one, as a
    database groups commits.

    The function runs in the database threads, or, given as `on_loop`, on the event loop itself (a coroutine
    function that sends its statements from the loop, `aditus.db.results_in_one_message_async`).

    One request alone waits as long as before (its batch starts at once). Many at a time share trips: under
    load, a thread hop, a psycopg round trip and a commit per call for each step, and the threads' contention
    for the GIL that grew with them, cost more than the rest of the gateway's work for the call.

    With `linger`, a batch of `patient` items (work nobody waits for, such as a usage row saved after its
    response) first waits up to `linger` seconds for company, so that a few calls share a trip even when they
    do not overlap; an item that is not patient, or a full batch, starts it at once.
    """

    def __init__(
        self,
        function: Callable[[list], list] | None = None,
        *,
        on_loop: Callable[[list], Awaitable[list]] | None = None,
        max_in_flight: int,
        max_items: int = 100,
        linger: float = 0.0,
    ):
        # items -> one answer (or exception) per item, in order: `function` in the database threads, or the
        # coroutine function `on_loop` on the event loop
        self._function, self._on_loop = function, on_loop
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
                items = [item for item, _ in batch]
                if self._on_loop is not None:
                    answers = await self._on_loop(items)
                else:
                    answers = await database_threads().submit(self._function, {"items": items})
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


_batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> {name: Batches}


def _batched(name: str) -> Batches:
    loop = asyncio.get_running_loop()
    found = _batches.get(loop)
    if found is None:
        found = _batches[loop] = {
            # One write at a time: the attempts that finish meanwhile go together in the next (and a write's rows
            # are the ones every call updates, so concurrent writes would only queue on them in PostgreSQL).
            # A row saved after its response (the successful call's) first waits up to ATTEMPTS_LINGER for
            # others: at one client, its write in a database thread, alone, slowed the next request by ~0.6 ms
            # at the median (GIL and wake-ups); a few rows per write cost less, and contend less often.
            "attempts": Batches(lambda items: attempts_finish(attempts=items), max_in_flight=1, linger=ATTEMPTS_LINGER),
            # Small batches, several at a time: a request waits only for the few of its batch (and a slow one, a
            # lock wait, holds up only those). At 256 clients of a 1 s provider, 8 x 8 served 5-10% more than
            # 4 x 100 or 16 x 4 (benchmarks/gateway.py's scenario, alternated runs).
            "prepare": Batches(lambda items: requests_prepare(jobs=items), max_in_flight=8, max_items=8),
            # Bearer-token requests on PostgreSQL: their statements go from the loop itself (`aditus.db`).
            "prepare_on_loop": Batches(on_loop=requests_prepare_on_loop, max_in_flight=LOOP_CONNECTIONS, max_items=32),
        }
    return found[name]


async def request_prepare_async(**job: Any) -> Prepared:
    """`request_prepare` for the async views. On PostgreSQL a bearer-token request sends its statements from
    the event loop (`requests_prepare_on_loop`); others go to the database threads, with the requests that wait
    at the same time (`Batches`). An upload (the image task) goes alone: reading it is slow enough to hold up a
    batch."""
    request = job["request"]
    if request.content_type == "multipart/form-data":
        return await _request_prepare_alone(**job)
    if on_postgresql() and _bearer_secret(request) is not None:
        return await _batched("prepare_on_loop").run(job)
    return await _batched("prepare").run(job)


async def requests_prepare_on_loop(jobs: list[dict[str, Any]]) -> list[Prepared | Exception]:
    """`requests_prepare` for bearer-token requests, its statements sent from the event loop
    (`aditus.db.results_in_one_message_async`): the tokens and the candidates of all of them in one message, the
    first reservations in another (`usage.services.tokens_reserve_many_on_loop`). What that cannot do goes to the
    database threads: recording a token's use (a write, once a minute), a reservation only `tokens_reserve` can
    make or refuse, and the whole batch if the loop's connection fails."""
    secrets = [_bearer_secret(job["request"]) for job in jobs]  # checked before they were queued
    tasks = sorted({job["task"] for job in jobs})
    try:
        read = await results_in_one_message_async(
            [token_query(secret) for secret in secrets] + [candidates_query(task) for task in tasks]
        )
    except psycopg.Error:
        logger.warning("The event loop's database connection failed; preparing in a database thread", exc_info=True)
        return await database_threads().submit(requests_prepare, {"jobs": jobs})
    candidate_rows = dict(zip(tasks, read[len(secrets) :], strict=True))
    answers: list[Prepared | Exception] = []
    unrecorded = []  # tokens whose use is due to be written
    for job, secret, token_rows in zip(jobs, secrets, read, strict=False):
        answers.append(
            answer_or_error(
                lambda job=job, secret=secret, token_rows=token_rows: _prepared_from_rows(
                    job, secret, token_rows, candidate_rows[job["task"]], unrecorded=unrecorded
                )
            )
        )
    if unrecorded:
        try:
            await database_threads().submit(_tokens_mark_used, {"tokens": unrecorded})
        except DatabaseError:  # when a token was last used is not worth failing the requests for
            logger.exception("Could not record the use of %d bearer tokens", len(unrecorded))
    waiting = [
        (position, prepared, estimate_tokens(prepared.provider_request, settings.TASK_IMAGE_TOKEN_ALLOWANCE))
        for position, prepared in enumerate(answers)
        if isinstance(prepared, Prepared) and prepared.ready
    ]
    reserved = await tokens_reserve_many_on_loop(
        [(prepared.ready[0].config, estimate) for _, prepared, estimate in waiting]
    )
    elsewhere: dict[int, Awaitable[Prepared]] = {}  # position -> its reservation in a database thread
    for (position, prepared, estimate), reservation in zip(waiting, reserved, strict=True):
        if reservation is RESERVE_IN_A_THREAD:
            elsewhere[position] = _reserve_first_async(prepared=prepared, estimate=estimate)
        else:
            prepared.first_reservation = reservation
    outcomes = await asyncio.gather(*elsewhere.values(), return_exceptions=True)
    for position, outcome in zip(elsewhere, outcomes, strict=True):
        if isinstance(outcome, Exception):  # that request's own failure
            answers[position] = outcome
        elif isinstance(outcome, BaseException):
            raise outcome
    return answers


def _tokens_mark_used(*, tokens: list) -> None:
    for token in tokens:
        token.mark_used()


async def attempt_finish_async(*, patient: bool = False, **attempt: Any) -> UsageRecord:
    """Save one attempt's row, given as the arguments of `usage.services.attempt_save`, with the attempts that
    wait at the same time (`attempts_finish`, `Batches`); raises what kept it from being saved. A `patient` save
    (one nobody waits for: after the response) may wait up to ATTEMPTS_LINGER for company."""
    return await _batched("attempts").run(attempt, patient=patient)


_request_prepare_alone = in_thread(request_prepare)
_reserve_first_async = in_thread(_reserve_first)
tokens_hold_async = in_thread(tokens_hold)
