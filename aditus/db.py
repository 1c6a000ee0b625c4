"""Database helpers: several statements in one round trip, statements PostgreSQL plans once per connection, and
the same from the event loop."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections
from django.db.utils import load_backend
from psycopg import errors
from psycopg.pq import ExecStatus

from aditus.aio import when_loop_closes

TUPLES_OK = ExecStatus.TUPLES_OK


def results_in_one_message(statements: Sequence[tuple[str, Sequence]]) -> list[list[tuple] | None]:
    """PostgreSQL: run `statements` (SQL, parameters) as one message, in one round trip; return each one's rows
    (None for a statement that returns none).

    PostgreSQL runs the statements of one simple-protocol message as one transaction (or as part of the
    caller's, if there is one), so they commit together or not at all. Django's PostgreSQL cursors bind
    parameters on the client side (`mogrify`), which is what lets a message hold several statements. Each
    statement is sent as `prepared` gives it.
    """
    if connection.vendor != "postgresql":
        raise RuntimeError("results_in_one_message needs PostgreSQL")
    try:
        return _results_in_one_message(statements)
    except DatabaseError as error:
        # A prepared statement this connection no longer has (a pooler or someone ran DISCARD ALL or DEALLOCATE),
        # or whose plan a migration invalidated ("cached plan must not change result type"). Outside a
        # transaction nothing was done: forget what was prepared here, and prepare again once.
        if connection.in_atomic_block or not _prepared_statement_lost(error):
            raise
        _forget_prepared()
        return _results_in_one_message(statements)


def _results_in_one_message(statements: Sequence[tuple[str, Sequence]]) -> list[list[tuple] | None]:
    results: list[list[tuple] | None] = []
    with connection.cursor() as cursor:
        # The driver's cursor for what cannot fail (binding, reading results already received): Django's wrapper
        # wraps every attribute it hands out. Each statement is bound on its own and the message sent as it is:
        # psycopg caches how it splits a query around its placeholders per query text, and a message's text
        # changes with what it holds.
        driver = cursor.cursor
        names = _prepared_names()
        cursor.execute(";\n".join(driver.mogrify(*_prepared(names, sql, params)) for sql, params in statements))
        for position in range(len(statements)):
            if position and not driver.nextset():
                raise RuntimeError("PostgreSQL returned fewer results than statements sent")
            # (`description` would build a column list to say the same)
            results.append(driver.fetchall() if driver.pgresult.status == TUPLES_OK else None)
    return results


def answer_or_error(call: Callable[[], Any]) -> Any:
    """For functions that answer a batch of items one by one (`usage.services.attempts_save`,
    `tasks.services.requests_prepare`): what `call` returns, or the exception it raised, to hand back to the item
    it belongs to instead of failing the whole batch."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - handed back to the item it belongs to
        return error


# --- Prepared statements --------------------------------------------------------------------------------------
#
# Django's PostgreSQL cursors bind parameters on the client, so PostgreSQL parses and plans every statement it is
# sent, every time. For the hot path's statements that planning was most of the database's work: the two rollup
# upserts (forty-odd columns each) took ~1 ms each to plan and ~0.2 ms to run, and a recorded call cost PostgreSQL
# ~5 ms of CPU in all, more than the gateway itself. `prepared` sends such a statement as `EXECUTE name(values)`,
# after a `PREPARE name AS ...` once per connection; PostgreSQL then keeps its plan for the session. `EXECUTE` is
# an ordinary statement, so it still fits in a multi-statement message with client-side binding.
#
# A `PREPARE` is not undone by a rollback; it lasts as long as the connection, which is what the per-connection
# record below follows (a new connection is a new object). If the connection loses them anyway (DISCARD ALL,
# DEALLOCATE) or a migration changes what one returns, `results_in_one_message` prepares again once, outside a
# transaction. Poolers in transaction mode (PgBouncer) hand a session's statements to other connections: turn
# DATABASE_PREPARED_STATEMENTS off behind one.

_PLACEHOLDER = re.compile(r"%%|%s|%\((\w+)\)s")


@dataclass(frozen=True, slots=True)
class _Statement:
    name: str
    prepare_sql: str  # PREPARE name AS <the statement with $1, $2, ...>
    execute_sql: str  # EXECUTE name(%s, %s, ...)
    parameter_names: tuple[str, ...] | None  # for %(name)s statements: the names in $-number order


_statements: dict[str, _Statement] = {}
_sources: dict[str, str] = {}  # statement name -> its SQL, for `statement_sources`
# Per database connection (the driver's object, so a reconnection starts empty): the names prepared on it.
_prepared_on: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def on_postgresql() -> bool:
    """Whether the default database is PostgreSQL, without touching `connection` (on the event loop, each task's
    first use of it builds a database wrapper of its own, left for the garbage collector when the task ends)."""
    return _vendor(connections.settings[DEFAULT_DB_ALIAS]["ENGINE"]) == "postgresql"


@functools.cache
def _vendor(engine: str) -> str:
    return load_backend(engine).DatabaseWrapper.vendor


def prepared_statements_enabled() -> bool:
    return on_postgresql() and getattr(settings, "DATABASE_PREPARED_STATEMENTS", True)


def prepared(sql: str, params: Sequence | Mapping) -> tuple[str, Sequence | Mapping]:
    """The statement to send for `sql` with `params` (`%s` or `%(name)s` placeholders): on PostgreSQL with
    DATABASE_PREPARED_STATEMENTS, `EXECUTE` of it, prepared on this connection first if it is not yet; otherwise
    `sql` and `params` as they are. Every value is still a parameter, bound as the cursor binds any other."""
    return _prepared(_prepared_names(), sql, params)


def _prepared_names() -> set[str] | None:
    """The names of the statements prepared on this thread's connection (None: not preparing)."""
    if not prepared_statements_enabled():
        return None
    connection.ensure_connection()
    with _prepared_lock:
        return _prepared_on.setdefault(connection.connection, set())


def _prepared(names: set[str] | None, sql: str, params: Sequence | Mapping) -> tuple[str, Sequence | Mapping]:
    statement, sent, params = _to_send(names, sql, params)
    if statement is not None:
        with connection.cursor() as cursor:
            cursor.execute(statement.prepare_sql)
        names.add(statement.name)
    return sent, params


def _to_send(
    names: set[str] | None, sql: str, params: Sequence | Mapping
) -> tuple[_Statement | None, str, Sequence | Mapping]:
    """(the statement to PREPARE first, if the connection lacks it; the SQL to send; its parameters)."""
    if names is None:
        return None, sql, params
    statement = _statements.get(sql) or _statement(sql)
    if statement.parameter_names is not None:
        params = [params[name] for name in statement.parameter_names]
    return (statement if statement.name not in names else None), statement.execute_sql, params


def _prepared_statement_lost(error: Exception) -> bool:
    """Whether `error` (the driver's, or Django's wrapping it) says a prepared statement is gone or stale."""
    cause = error.__cause__ if isinstance(error, DatabaseError) else error
    if not prepared_statements_enabled():
        return False
    if isinstance(cause, errors.InvalidSqlStatementName):
        return True
    return isinstance(cause, errors.FeatureNotSupported) and "cached plan" in str(cause)


def _forget_prepared() -> None:
    """Drop this connection's prepared statements: PostgreSQL's, and our record of them."""
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    with _prepared_lock:
        _prepared_on.pop(connection.connection, None)


def _statement(sql: str) -> _Statement:
    numbers: dict[str, int] = {}  # parameter name (or position) -> $-number
    named: list[bool] = []

    def number(match: re.Match) -> str:
        if match.group(0) == "%%":
            return "%"
        name = match.group(1)
        named.append(name is not None)
        key = name if name is not None else str(len(numbers))
        if key not in numbers:
            numbers[key] = len(numbers) + 1
        return f"${numbers[key]}"

    body = _PLACEHOLDER.sub(number, sql)
    if any(named) and not all(named):
        raise ValueError("a statement mixes %s and %(name)s placeholders")
    name = "aditus_" + hashlib.sha256(sql.encode()).hexdigest()[:20]
    arguments = ", ".join(["%s"] * len(numbers))
    statement = _Statement(
        name=name,
        prepare_sql=f"PREPARE {name} AS {body}",
        execute_sql=f"EXECUTE {name}({arguments})" if numbers else f"EXECUTE {name}",
        parameter_names=tuple(numbers) if any(named) else None,
    )
    _statements[sql] = statement
    _sources[name] = sql
    return statement


_EXECUTE = re.compile(r"EXECUTE (aditus_[0-9a-f]{20})(?:\((?:[^()']|'(?:[^']|'')*')*\))?")


def statement_sources(sent: str) -> str:
    """`sent` (SQL as a cursor sent it) with each `EXECUTE` of a statement `prepared` here replaced by that
    statement's SQL, placeholders and all: for tests and debugging that read what a block of code ran."""
    return _EXECUTE.sub(lambda match: _sources.get(match.group(1), match.group(0)), sent)


# --- On the event loop ----------------------------------------------------------------------------------------
#
# The request path's own statements (the bearer token and the task's candidates, the first reservation) are also
# sent from the event loop, over a connection of the loop's own, instead of from a database thread. Under load the
# loop thread holds the GIL most of the time, and a thread's job needs it back after every wait on the network:
# at 256 clients of a 1 s provider a prepare batch took 35-65 ms in its thread for ~2 ms of work (PostgreSQL sat
# idle, its sessions in ClientRead), and the requests waited 65-190 ms for it. On the loop there is nothing to
# hand over: the statements are sent, and the loop serves other requests until the answer is in.
#
# The loop's connections (LOOP_CONNECTIONS) are in autocommit mode: each message is one short implicit
# transaction. Each is opened on first use, opened again after it broke or passed CONN_MAX_AGE, and closed when
# its loop shuts down; same settings as Django's own connections (time zone, type adapters). Their statements
# are prepared as `prepared` prepares Django's (DATABASE_PREPARED_STATEMENTS).


# Connections per event loop: as many as the batches of requests that send statements from the loop at once
# (`tasks.services`), so that one batch need not wait for another's answer.
LOOP_CONNECTIONS = 2


@dataclass(slots=True)
class _Slot:
    connection: Any = None  # psycopg.AsyncConnection, once opened
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)
    close_at: float | None = None  # time.monotonic() after which it is replaced (CONN_MAX_AGE)

    def usable(self) -> bool:
        return self.connection is not None and not self.connection.closed

    def expired(self) -> bool:
        return self.close_at is not None and time.monotonic() >= self.close_at


@dataclass(slots=True)
class _LoopConnections:
    slots: list[_Slot] = field(default_factory=lambda: [_Slot() for _ in range(LOOP_CONNECTIONS)])
    turn: int = 0
    closer: Any = None

    def pick(self) -> _Slot:
        """An open connection nobody is using; else one to open; else the next in turn (psycopg queues its
        users)."""
        for slot in self.slots:
            if slot.usable() and not slot.connection.lock.locked():
                return slot
        for slot in self.slots:
            if not slot.usable():
                return slot
        self.turn = (self.turn + 1) % len(self.slots)
        return self.slots[self.turn]

    async def close(self) -> None:
        for slot in self.slots:
            if slot.connection is not None:
                await slot.connection.close()


_loop_connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> _LoopConnections


async def results_in_one_message_async(statements: Sequence[tuple[str, Sequence]]) -> list[list[tuple] | None]:
    """`results_in_one_message` from the running event loop, over its own connection (see above). Outside any
    transaction; raises the driver's errors (`psycopg.Error`), not Django's."""
    if not on_postgresql():
        raise RuntimeError("results_in_one_message_async needs PostgreSQL")
    driver = await _loop_connection()
    try:
        return await _results_on(driver, statements)
    except psycopg.Error as error:
        if not _prepared_statement_lost(error) or driver.closed:
            raise
        await driver.execute("DEALLOCATE ALL")
        with _prepared_lock:
            _prepared_on.pop(driver, None)
        return await _results_on(driver, statements)


async def _results_on(driver, statements: Sequence[tuple[str, Sequence]]) -> list[list[tuple] | None]:
    names = None
    if prepared_statements_enabled():
        with _prepared_lock:
            names = _prepared_on.setdefault(driver, set())
    cursor = driver.cursor()
    parts = []
    for sql, params in statements:
        statement, sent, sent_params = _to_send(names, sql, params)
        if statement is not None:
            # Noted before the PREPARE is awaited: a message sent meanwhile over this connection (psycopg runs
            # them in turn) then executes it instead of preparing it a second time ("already exists").
            names.add(statement.name)
            try:
                await cursor.execute(statement.prepare_sql)
            except BaseException:
                names.discard(statement.name)
                raise
        parts.append(cursor.mogrify(sent, sent_params))
    await cursor.execute(";\n".join(parts))
    results: list[list[tuple] | None] = []
    for position in range(len(statements)):
        if position and not cursor.nextset():
            raise RuntimeError("PostgreSQL returned fewer results than statements sent")
        results.append(await cursor.fetchall() if cursor.pgresult.status == TUPLES_OK else None)
    return results


async def _loop_connection():
    loop = asyncio.get_running_loop()
    connections_here = _loop_connections.get(loop)
    if connections_here is None:
        connections_here = _loop_connections[loop] = _LoopConnections()
        connections_here.closer = when_loop_closes(connections_here.close)  # the loop holds it weakly
    slot = connections_here.pick()
    if slot.usable() and slot.expired() and not slot.connection.lock.locked():
        await slot.connection.close()  # past CONN_MAX_AGE, as Django replaces its own
    if not slot.usable():
        async with slot.opening:
            if not slot.usable():
                slot.connection = await _connect()
                max_age = connections[DEFAULT_DB_ALIAS].settings_dict["CONN_MAX_AGE"]
                # (0, a connection per request for Django, has no counterpart here: kept, as with None)
                slot.close_at = time.monotonic() + max_age if max_age else None
    return slot.connection


async def _connect():
    """A connection like Django's own for the default database (same parameters, time zone and type adapters),
    in autocommit mode, binding parameters on the client as Django's do."""
    database = connections[DEFAULT_DB_ALIAS]
    params = database.get_connection_params()
    params.pop("cursor_factory", None)
    driver = await psycopg.AsyncConnection.connect(**params, autocommit=True, cursor_factory=psycopg.AsyncClientCursor)
    if driver.info.parameter_status("TimeZone") != database.timezone_name:
        await driver.execute("SELECT set_config('TimeZone', %s, false)", [database.timezone_name])
    return driver
