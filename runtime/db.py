"""Statements of the request path, sent the same way on SQLite and PostgreSQL.

A workflow (authenticate and read the candidates, reserve, record) is a list of statements, written once in the
SQL both databases speak, and handed to `execute`:

- on PostgreSQL, from the event loop, over a connection of psycopg's `AsyncConnectionPool` (the serving loop's,
  see `pool_open`), as ONE message: the statements, bound on the client, go out together and their results come
  back together, one round trip, and PostgreSQL runs them as one transaction, so the rows they lock stay locked
  only while it runs them, never across a trip back to this process. psycopg's pipeline mode does the same
  with server-side binding and prepared statements, but flushes and polls the socket once per statement: 0.09 ms
  of CPU per statement against 0.03 in one message here, and a call sends about fifteen. Each statement is
  sent as an EXECUTE of a statement prepared once per connection (see "Statements PostgreSQL plans once");
- on SQLite, in a thread of `runtime.threads`, on Django's connection of that thread.

`execute_sync` runs the same statements on the calling thread's Django connection, inside the caller's
transaction if there is one: for commands, the admin and tests.

The differences of dialect live here and nowhere else: on SQLite a `FOR UPDATE` is dropped (a writing
transaction holds the whole database, settings' "IMMEDIATE" transaction mode takes it at BEGIN), `CAST(x AS DATE)`
and `CAST(x AS TIMESTAMPTZ)` become casts to text (as SQLite stores them), aware datetimes are sent as Django
stores them, and dates and datetimes come back as text (`as_date`, `as_datetime`).

A connection found dead is discarded by the pool and the statements are sent once more on a fresh one (after
the pool has replaced the idle connections that died with it). They were rolled back with the connection,
unless it died in the instant between PostgreSQL committing and the answer arriving: the workflows recognise
that case themselves (`usage.services`: a reservation's id, a recording's receipt). Errors are Django's
(`DatabaseError` and its subclasses), whichever database raised them.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db import utils as django_errors
from django.utils.dateparse import parse_datetime

from runtime.batches import Batches, loop_batches
from runtime.threads import run_in_thread

Statement = tuple[str, Sequence[Any] | Mapping[str, Any]]
Rows = list[tuple]


def vendor() -> str:
    return connections[DEFAULT_DB_ALIAS].vendor


async def execute(statements: Sequence[Statement], *, atomic: bool = True) -> list[Rows]:
    """Run `statements` in order (in one transaction when `atomic`) from the event loop; return each one's rows
    (empty for a statement that returns none). See the module docstring for how."""
    if vendor() != "postgresql":
        return await run_in_thread(execute_sync, statements, atomic=atomic)
    for last_try in (False, True):
        try:
            async with _connection() as driver:
                # (Not atomic only says it need not be: one message is the cheapest way on PostgreSQL either way.)
                try:
                    return await _in_one_message(driver, statements)
                except (psycopg.errors.InvalidSqlStatementName, psycopg.errors.FeatureNotSupported) as error:
                    # A prepared statement the connection lost (DISCARD ALL, DEALLOCATE) or whose plan a migration
                    # made stale: nothing was done; prepare again, once.
                    if last_try or not _prepared_statement_lost(error):
                        raise
                    _prepared_on.pop(driver, None)
                    await driver.execute("DEALLOCATE ALL")
                    return await _in_one_message(driver, statements)
        except psycopg.OperationalError as error:
            if last_try or not _connection_lost(driver_error=error):
                raise _as_django_error(error) from error
            # The broken connection is gone (the pool drops it); those idle beside it went the same way, as
            # when the server restarts: replace them before trying again, never reuse one.
            await _replace_dead_connections()
        except psycopg.Error as error:
            raise _as_django_error(error) from error
    raise AssertionError("unreachable")


async def execute_shared(statements: Sequence[Statement], *, order: int = 0) -> list[Rows]:
    """`execute` for statements that may share one message (and its transaction) with those other requests of
    this event loop send at the same moment: under load, one round trip and one commit for several requests
    instead of one each (`Batches`, at most SHARED_IN_FLIGHT messages at a time). Each request's statements stay
    together, the groups sorted by `order` (the lock order: the caller's, e.g. a config's id). If the shared
    message fails for a reason other than the database being unreachable, each group is sent again alone, so
    that one group's error is its own. On SQLite, `execute`.

    Only for groups whose statements hold no lock another group of the same message could need first, in an
    order other than `order`: reads, and reservations (usage.services)."""
    if vendor() != "postgresql":
        return await execute(statements)
    return await loop_batches("runtime.db.shared", _shared_batches).run((order, statements))


SHARED_IN_FLIGHT = 4


def _shared_batches() -> Batches:
    return Batches(_execute_groups, max_in_flight=SHARED_IN_FLIGHT, max_items=32)


async def _execute_groups(groups: list[tuple[int, Sequence[Statement]]]) -> list[list[Rows] | Exception]:
    if len(groups) == 1:
        return [await _answer(groups[0][1])]
    in_order = sorted(range(len(groups)), key=lambda position: groups[position][0])
    try:
        rows = await execute([statement for position in in_order for statement in groups[position][1]])
    except django_errors.DatabaseError as error:
        if is_unavailable(error):
            return [error] * len(groups)
        return [await _answer(statements) for _order, statements in groups]
    answers: list = [None] * len(groups)
    start = 0
    for position in in_order:
        end = start + len(groups[position][1])
        answers[position] = rows[start:end]
        start = end
    return answers


async def _answer(statements: Sequence[Statement]) -> list[Rows] | Exception:
    try:
        return await execute(statements)
    except django_errors.DatabaseError as error:
        return error


def execute_sync(statements: Sequence[Statement], *, atomic: bool = True) -> list[Rows]:
    """`execute` on this thread's Django connection (inside the caller's transaction, if any)."""
    database = connections[DEFAULT_DB_ALIAS]
    sqlite = database.vendor == "sqlite"
    results: list[Rows] = []
    # (one statement is a transaction of its own)
    with transaction.atomic() if atomic and len(statements) > 1 else nullcontext(), database.cursor() as cursor:
        for sql, params in statements:
            if sqlite:
                sql, params = _for_sqlite(sql, params, database)
            cursor.execute(sql, params)
            results.append(cursor.fetchall() if cursor.description is not None else [])
    return results


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK
_inserts: dict[tuple[type, bool], tuple[str, list]] = {}


def insert_statement(instance, *, on_conflict_do_nothing: bool = False) -> Statement:
    """The INSERT of a model instance, RETURNING its primary key: what `instance.save(force_insert=True)`
    sends, without compiling an ORM query (about 0.3 ms of CPU). An automatic primary key that is not set is
    left to the database."""
    model = type(instance)
    key = (model, on_conflict_do_nothing)
    found = _inserts.get(key)
    if found is None:
        meta = model._meta
        database = connections[DEFAULT_DB_ALIAS]
        quote = database.ops.quote_name
        fields = [field for field in meta.concrete_fields if not field.primary_key]
        conflict = " ON CONFLICT DO NOTHING" if on_conflict_do_nothing else ""
        sql = (
            f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(fields))}){conflict} RETURNING {quote(meta.pk.column)}"
        )
        found = _inserts[key] = (sql, fields)
    sql, fields = found
    database = connections[DEFAULT_DB_ALIAS]
    return sql, [field.get_db_prep_save(getattr(instance, field.attname), database) for field in fields]


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached just now (a lost or refused connection, no free one in
    time, SQLite's lock held too long), not that a statement or the schema is wrong."""
    if isinstance(error, django_errors.InterfaceError):
        return True
    if not isinstance(error, django_errors.OperationalError):
        return False
    cause = error.__cause__
    if isinstance(cause, psycopg.Error):
        return cause.sqlstate is None or cause.sqlstate.startswith(("08", "57P"))
    return any(words in str(error) for words in ("database is locked", "database table is locked", "unable to open"))


def violated_constraint(error: BaseException) -> str | None:
    """The name of the constraint an IntegrityError from `execute` violated, when the database says (PostgreSQL)."""
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


def as_date(value: Any) -> date | None:
    """A DATE column as a date: PostgreSQL gives one, SQLite text."""
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value)


def as_datetime(value: Any) -> datetime | None:
    """A timestamp column as an aware datetime: PostgreSQL gives one, SQLite naive UTC (or text)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = parse_datetime(value)
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


# --- SQLite ----------------------------------------------------------------------------------------------------

_sqlite_sql: dict[str, str] = {}


def _for_sqlite(sql: str, params: Any, database) -> tuple[str, Any]:
    text = _sqlite_sql.get(sql)
    if text is None:
        # SQLite stores dates and times as text; CAST(x AS DATE) would make a number of it.
        text = sql.replace(" FOR UPDATE", "").replace(" AS DATE)", " AS TEXT)").replace(" AS TIMESTAMPTZ)", " AS TEXT)")
        _sqlite_sql[sql] = text
    adapt = database.ops.adapt_datetimefield_value
    if isinstance(params, Mapping):
        params = {name: adapt(value) if isinstance(value, datetime) else value for name, value in params.items()}
    else:
        params = [adapt(value) if isinstance(value, datetime) else value for value in params]
    return text, params


# --- PostgreSQL ------------------------------------------------------------------------------------------------


async def _in_one_message(driver: psycopg.AsyncConnection, statements: Sequence[Statement]) -> list[Rows]:
    # PostgreSQL runs the statements of one simple-protocol message as one transaction (the connection is in
    # autocommit mode, so nothing else opens one): they commit together or not at all, and a failed one skips
    # the rest. Client-side binding is what lets a message hold several statements.
    cursor = driver.cursor()
    if settings.DATABASE_PREPARED_STATEMENTS:
        statements = await _executes(driver, statements)
    await cursor.execute(";\n".join(cursor.mogrify(sql, params) for sql, params in statements))
    results: list[Rows] = []
    for position in range(len(statements)):
        if position and not cursor.nextset():
            raise RuntimeError("PostgreSQL returned fewer results than statements sent")
        results.append(await cursor.fetchall() if cursor.pgresult.status == _TUPLES_OK else [])
    return results


# --- Statements PostgreSQL plans once per connection ---------------------------------------------------------
#
# Sent as they are, PostgreSQL would plan each statement every time: at one client about 1 ms of the database's
# CPU per call (the reservation and the recording: a dozen statements, the rollup upserts forty-odd columns
# each), on the cores the gateway shares with it. psycopg's own prepared statements need the extended protocol,
# one statement per round trip, or its pipeline mode, which costs the gateway 0.09 ms of CPU a statement. So a
# statement is PREPAREd once per connection (in a message of its own, the first time the connection sends it),
# and then sent as `EXECUTE name(values)`, which still fits a multi-statement message with client-side binding
# (and is shorter to bind). Behind a pooler in transaction mode (PgBouncer), which moves a session's prepared
# statements between connections, set DATABASE_PREPARED_STATEMENTS=0.

_PLACEHOLDER = re.compile(r"%%|%s|%\((\w+)\)s")


@dataclass(frozen=True, slots=True)
class _Prepared:
    name: str
    prepare: str  # PREPARE name AS <the statement with $1, $2, ...>
    execute: str  # EXECUTE name(%s, %s, ...)
    names: tuple[str, ...] | None  # for %(name)s statements: the names in $-number order


_prepared_statements: dict[str, _Prepared] = {}
_prepared_on: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> names prepared on it


def _prepared(sql: str) -> _Prepared:
    found = _prepared_statements.get(sql)
    if found is not None:
        return found
    numbers: dict[str, int] = {}  # parameter name (or position) -> $-number

    def number(match: re.Match) -> str:
        if match.group(0) == "%%":
            return "%"
        key = match.group(1) if match.group(1) is not None else str(len(numbers))
        numbers.setdefault(key, len(numbers) + 1)
        return f"${numbers[key]}"

    body = _PLACEHOLDER.sub(number, sql)
    named = "%(" in sql
    name = "aditus_" + hashlib.sha256(sql.encode()).hexdigest()[:20]
    arguments = ", ".join(["%s"] * len(numbers))
    found = _prepared_statements[sql] = _Prepared(
        name=name,
        prepare=f"PREPARE {name} AS {body}",
        execute=f"EXECUTE {name}({arguments})" if numbers else f"EXECUTE {name}",
        names=tuple(numbers) if named else None,
    )
    return found


async def _executes(driver: psycopg.AsyncConnection, statements: Sequence[Statement]) -> list[Statement]:
    """`statements` as EXECUTEs of statements prepared on `driver`, preparing there first those it lacks."""
    done = _prepared_on.setdefault(driver, set())
    prepared = [_prepared(sql) for sql, _params in statements]
    missing = {statement.name: statement for statement in prepared if statement.name not in done}
    if missing:
        for statement in missing.values():
            # One by one and outside any transaction: a PREPARE is session state, which no rollback undoes.
            with suppress(psycopg.errors.DuplicatePreparedStatement):  # prepared by a message whose answer was lost
                await driver.execute(statement.prepare)
            done.add(statement.name)
    return [
        (statement.execute, [params[name] for name in statement.names] if statement.names is not None else params)
        for statement, (_sql, params) in zip(prepared, statements, strict=True)
    ]


def _prepared_statement_lost(error: psycopg.Error) -> bool:
    return isinstance(error, psycopg.errors.InvalidSqlStatementName) or "cached plan" in str(error)


def _connection_lost(*, driver_error: psycopg.OperationalError) -> bool:
    """Whether the connection died (terminated, reset, unreachable): sent again on a fresh one. A statement that
    failed on a live connection (a deadlock, a timeout) is not, nor a wait for a free connection that timed out."""
    if type(driver_error).__name__ == "PoolTimeout":
        return False
    state = driver_error.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


_DJANGO_ERRORS = (
    (psycopg.IntegrityError, django_errors.IntegrityError),
    (psycopg.OperationalError, django_errors.OperationalError),
    (psycopg.InterfaceError, django_errors.InterfaceError),
    (psycopg.DataError, django_errors.DataError),
    (psycopg.ProgrammingError, django_errors.ProgrammingError),
    (psycopg.InternalError, django_errors.InternalError),
    (psycopg.NotSupportedError, django_errors.NotSupportedError),
)


def _as_django_error(error: psycopg.Error) -> django_errors.DatabaseError:
    for driver_class, django_class in _DJANGO_ERRORS:
        if isinstance(error, driver_class):
            return django_class(*error.args)
    return django_errors.DatabaseError(*error.args)


# psycopg remembers how it splits a query around its placeholders only for queries of up to 4096 bytes and 50
# parameters. The rollup upserts (usage.rollups) are about 5 KB with 53: without a wider bound they were split
# again for every recorded call, ~0.1 ms of CPU each. The bound stays a bound (psycopg's cache keeps 128 queries).
CACHED_QUERY_BYTES = 16 * 1024
CACHED_QUERY_PARAMETERS = 256


def psycopg_query_cache_widen() -> None:
    """Raise psycopg's size bounds for the queries whose splitting it caches. The one place aditus sets a private
    attribute of a library (`psycopg._queries`, which has no public setting for it); tests/runtime/test_db.py fails
    if an upgrade removes them."""
    from psycopg import _queries

    _queries.MAX_CACHED_STATEMENT_LENGTH = max(_queries.MAX_CACHED_STATEMENT_LENGTH, CACHED_QUERY_BYTES)
    _queries.MAX_CACHED_STATEMENT_PARAMS = max(_queries.MAX_CACHED_STATEMENT_PARAMS, CACHED_QUERY_PARAMETERS)


psycopg_query_cache_widen()


# The pool of a serving event loop: opened by `pool_open` (the ASGI lifespan's start-up, see `runtime.asgi`) and
# closed by `pool_close` (its shutdown) while the loop's tasks, the pool's workers among them, still run. A loop
# without one (`asyncio.run`, `async_to_sync` in Django's WSGI and test clients: a loop per call) opens a
# connection per `execute` instead.
_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _connection_params() -> dict[str, Any]:
    database = connections[DEFAULT_DB_ALIAS]
    params = database.get_connection_params()
    params.pop("cursor_factory", None)
    params["autocommit"] = True
    params["cursor_factory"] = psycopg.AsyncClientCursor
    return params


async def _configure(driver: psycopg.AsyncConnection) -> None:
    timezone_name = connections[DEFAULT_DB_ALIAS].timezone_name
    if driver.info.parameter_status("TimeZone") != timezone_name:
        await driver.execute("SELECT set_config('TimeZone', %s, false)", [timezone_name])


@asynccontextmanager
async def _connection() -> AsyncIterator[psycopg.AsyncConnection]:
    pool = _pools.get(asyncio.get_running_loop())
    if pool is not None:
        async with pool.connection() as driver:
            yield driver
        return
    async with await psycopg.AsyncConnection.connect(**_connection_params()) as driver:
        await _configure(driver)
        yield driver


_checks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> the lock of its check


async def _replace_dead_connections() -> None:
    """Test the idle connections of this loop's pool, replacing the dead ones (psycopg_pool's `check`); callers
    that find a check under way wait for it instead of starting another."""
    pool = _pools.get(asyncio.get_running_loop())
    if pool is None:
        return
    lock = _checks.setdefault(pool, asyncio.Lock())
    if lock.locked():
        async with lock:
            return
    async with lock:
        await pool.check()


async def pool_open() -> None:
    """Serve this event loop's statements from a pool (PostgreSQL; nothing to do on SQLite)."""
    from psycopg_pool import AsyncConnectionPool  # PostgreSQL only: SQLite installs need not load it

    loop = asyncio.get_running_loop()
    if vendor() != "postgresql" or loop in _pools:
        return
    database = connections[DEFAULT_DB_ALIAS]
    pool = _pools[loop] = AsyncConnectionPool(
        kwargs=_connection_params(),
        min_size=1,
        max_size=settings.DATABASE_POOL_SIZE,
        max_lifetime=float(database.settings_dict["CONN_MAX_AGE"] or 3600),
        timeout=settings.DATABASE_POOL_TIMEOUT_SECONDS,
        configure=_configure,
        open=False,
        name="aditus",
    )
    await pool.open()


async def pool_close() -> None:
    """Close this event loop's pool, if it has one."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


@asynccontextmanager
async def pooled() -> AsyncIterator[None]:
    """This event loop's statements from a pool while the block runs."""
    await pool_open()
    try:
        yield
    finally:
        await pool_close()
