"""Token limits, usage records and provider cooldowns: the reserve and record workflows of the request path.

Each workflow is written once, as statements in the SQL both databases speak, run by `runtime.db`: from the event
loop on the request path (`tokens_reserve_async`, `attempt_save_async`), or on the caller's own connection and in
its transaction (`tokens_reserve`, `attempt_record`: commands, the admin, tests). On PostgreSQL the statements of
one workflow travel in one round trip, so the rows they lock stay locked only while PostgreSQL runs them.
Everything that must hold across processes (limits, reservations, failure counts) is counted in the database by
statements that check and change a locked row, never read and written back in Python.

Reserving (`_Reserving`), in one transaction: create the window's counter rows if missing; lock both, month
first; insert the reservation only if the tokens fit both windows as the locked rows stand; add the tokens to
both counters only if the reservation was inserted. Its id is chosen here, so every statement can name it.

Recording (`_Recording`), one or many attempts in one transaction: lock their reservations; settle each counter
(the actual tokens in, what is still reserved out: a reservation already released by the expiry sweep releases
nothing twice); delete the reservations; insert the usage rows; add them to the rollups; note the configs'
health. A crossed budget threshold is inserted just after (`usage.alerts`).

Lock order, so that concurrent reservations, settlements and sweeps cannot deadlock: reservation rows in id
order, then counters by config (month before day), then rollup rows in key order, then cooldown rows in config
order. Reservations that share a message (`runtime.db.execute_shared`) go in config order too.

Commits stay synchronous (durable): the usage rows are the audit of what calls cost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import BooleanField, Case, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from providers.clients.base import ErrorType, TokenUsage
from runtime import db
from runtime.aio import shielded
from runtime.batches import Batches, loop_batches
from runtime.threads import run_in_thread
from usage.alerts import budget_crossings
from usage.metrics import attempt_observe
from usage.models import (
    BudgetAlert,
    BudgetPolicy,
    Outcome,
    Period,
    ProviderCooldown,
    Receipt,
    TokenCounter,
    TokenReservation,
    UsageRecord,
)
from usage.pricing import price_quote
from usage.rollups import rollup_statements
from usage.windows import Windows, window_resets_at

if TYPE_CHECKING:
    from providers.models import ProviderConfig

logger = logging.getLogger(__name__)

# Errors that count toward a cooldown: every failure that says something about the provider config rather than
# about the request. A bad request would fail the same way anywhere, so it does not count. Authentication,
# permission and unknown-model errors do: a config with a revoked key is skipped for a while instead of costing
# every request a round trip.
COOLDOWN_ERROR_TYPES: frozenset[str] = frozenset(ErrorType) - {ErrorType.BAD_REQUEST, ErrorType.LOCAL}

# How often one process sweeps expired reservations from the request path.
RESERVATION_SWEEP_INTERVAL_SECONDS = 60.0
_next_sweep = 0.0  # time.monotonic() after which the next sweep is due

# Seconds a usage row saved after its response waits for other rows to share its transaction.
ATTEMPTS_LINGER = 0.02

# Table names are spelled out so the SQL reads whole; a test checks them against the models' db_table.
# A parameter in a SELECT list has no type PostgreSQL could infer when it prepares the statement: each is cast
# (runtime.db writes DATE and TIMESTAMPTZ casts the way SQLite stores them).
_COUNTERS_CREATE = (
    "INSERT INTO usage_tokencounter (provider_config_id, period, window_start, used, reserved) "
    "SELECT CAST(%(config)s AS BIGINT), 'month', CAST(%(month_start)s AS DATE), 0, 0 WHERE NOT EXISTS (SELECT 1 "
    "FROM usage_tokencounter WHERE provider_config_id = %(config)s AND period = 'month' "
    "AND window_start = %(month_start)s) "
    "UNION ALL SELECT CAST(%(config)s AS BIGINT), 'day', CAST(%(day_start)s AS DATE), 0, 0 WHERE NOT EXISTS (SELECT 1 "
    "FROM usage_tokencounter WHERE provider_config_id = %(config)s AND period = 'day' "
    "AND window_start = %(day_start)s) "
    "ON CONFLICT DO NOTHING"
)
_COUNTERS_LOCK = (
    "SELECT period, used, reserved FROM usage_tokencounter WHERE provider_config_id = %(config)s "
    "AND ((period = 'month' AND window_start = %(month_start)s) OR (period = 'day' AND window_start = %(day_start)s)) "
    "ORDER BY period DESC FOR UPDATE"
)
# Inserted only if the tokens fit both windows as the rows locked above stand.
_RESERVATION_CREATE = (
    "INSERT INTO usage_tokenreservation (id, provider_config_id, day_counter_id, month_counter_id, tokens, "
    "expires_at, request_id, user_id, task, model, attempt, input_tokens) "
    "SELECT CAST(%(id)s AS BIGINT), CAST(%(config)s AS BIGINT), d.id, m.id, CAST(%(tokens)s AS BIGINT), "
    "CAST(%(expires_at)s AS TIMESTAMPTZ), CAST(%(request_id)s AS TEXT), CAST(%(user_id)s AS BIGINT), "
    "CAST(%(task)s AS TEXT), CAST(%(model)s AS TEXT), CAST(%(attempt)s AS INTEGER), "
    "CAST(%(input_tokens)s AS BIGINT) FROM usage_tokencounter m, usage_tokencounter d "
    "WHERE m.provider_config_id = %(config)s AND m.period = 'month' AND m.window_start = %(month_start)s "
    "AND d.provider_config_id = %(config)s AND d.period = 'day' AND d.window_start = %(day_start)s "
    "AND (CAST(%(month_limit)s AS BIGINT) IS NULL OR m.used + m.reserved + %(tokens)s <= %(month_limit)s) "
    "AND (CAST(%(day_limit)s AS BIGINT) IS NULL OR d.used + d.reserved + %(tokens)s <= %(day_limit)s) "
    "RETURNING month_counter_id, day_counter_id"
)
# Counted only if the reservation was inserted.
_RESERVATION_READ = "SELECT month_counter_id, day_counter_id FROM usage_tokenreservation WHERE id = %s"
_RESERVATION_COUNT = (
    "UPDATE usage_tokencounter SET reserved = reserved + %(tokens)s WHERE id IN "
    "(SELECT month_counter_id FROM usage_tokenreservation WHERE id = %(id)s "
    "UNION ALL SELECT day_counter_id FROM usage_tokenreservation WHERE id = %(id)s)"
)
_COUNTER_ADD_USED = (
    "INSERT INTO usage_tokencounter (provider_config_id, period, window_start, used, reserved) "
    "VALUES (%s, %s, %s, %s, 0) "
    "ON CONFLICT (provider_config_id, period, window_start) "
    "DO UPDATE SET used = usage_tokencounter.used + excluded.used "
    "RETURNING provider_config_id, period, window_start, used, (SELECT alert_thresholds FROM usage_budgetpolicy "
    "WHERE usage_budgetpolicy.provider_config_id = usage_tokencounter.provider_config_id)"
)
_RECEIPT = "INSERT INTO usage_receipt (id, created_at) VALUES (%s, %s)"
_RECEIPTS_FORGET = "DELETE FROM usage_receipt WHERE created_at < %s"
# The primary keys whose collision, when statements are sent again after a lost connection, says the first
# sending committed (`runtime.db`): a reservation's id, a recording's receipt.
_RESERVATION_KEY = "usage_tokenreservation_pkey"
_RECEIPT_KEY = "usage_receipt_pkey"
RECEIPTS_KEPT = timedelta(hours=1)
_EXPIRED_LOCK = (
    "SELECT r.id, r.provider_config_id, r.tokens, r.input_tokens, r.request_id, r.user_id, r.task, r.model, "
    "r.attempt, r.month_counter_id, r.day_counter_id, r.expires_at FROM usage_tokenreservation r "
    "WHERE r.expires_at <= %s ORDER BY r.id FOR UPDATE"
)
_COOLDOWN_FAILURE = (
    "INSERT INTO usage_providercooldown "
    "(provider_config_id, consecutive_failures, until, last_error_type, last_failure_at) "
    "VALUES (%s, 1, %s, %s, %s) "
    "ON CONFLICT (provider_config_id) DO UPDATE SET "
    "consecutive_failures = usage_providercooldown.consecutive_failures + 1, "
    "until = CASE WHEN usage_providercooldown.consecutive_failures + 1 >= %s "
    "THEN %s ELSE usage_providercooldown.until END, "
    "last_error_type = excluded.last_error_type, last_failure_at = excluded.last_failure_at "
    "RETURNING consecutive_failures"
)
_COOLDOWN_RESET = (
    "UPDATE usage_providercooldown SET consecutive_failures = 0, until = NULL "
    "WHERE provider_config_id = %s AND consecutive_failures > 0 RETURNING provider_config_id"
)


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def _reservations_lock(count: int) -> str:
    return f"SELECT id FROM usage_tokenreservation WHERE id IN ({_placeholders(count)}) ORDER BY id FOR UPDATE"  # noqa: S608


def _counter_settle(count: int) -> str:
    # What the named reservations still hold is released (nothing for one the sweep released already); the
    # tokens used are added either way: they were spent.
    return (
        "UPDATE usage_tokencounter SET used = used + %s, reserved = reserved - COALESCE((SELECT sum(tokens) "  # noqa: S608
        f"FROM usage_tokenreservation WHERE id IN ({_placeholders(count)})), 0) WHERE id = %s "
        "RETURNING provider_config_id, period, window_start, used, (SELECT alert_thresholds FROM usage_budgetpolicy "
        "WHERE usage_budgetpolicy.provider_config_id = usage_tokencounter.provider_config_id)"
    )


def _reservations_delete(count: int) -> str:
    return f"DELETE FROM usage_tokenreservation WHERE id IN ({_placeholders(count)})"  # noqa: S608


HAND_WRITTEN_SQL_TABLES = {
    "usage_receipt": Receipt,
    "usage_tokencounter": TokenCounter,
    "usage_tokenreservation": TokenReservation,
    "usage_providercooldown": ProviderCooldown,
    "usage_budgetpolicy": BudgetPolicy,
}

_PERIOD_WORDS = {Period.DAY: "daily", Period.MONTH: "monthly"}


# How soon a caller refused only because calls in flight hold the room may try again: they settle within seconds.
IN_FLIGHT_RETRY_SECONDS = 5


class LimitExceeded(Exception):
    """A config has too few tokens left in one of its windows for the call.

    `in_flight`: the tokens used so far would leave room; what is missing is held by calls in flight, which give
    back what they do not use when they settle (in seconds, not at the end of the window)."""

    def __init__(
        self,
        *,
        config_id: int,
        config_name: str,
        period: str,
        limit: int,
        resets_at: datetime,
        in_flight: bool = False,
    ):
        self.config_id = config_id
        self.period = period
        self.limit = limit
        self.resets_at = resets_at
        self.in_flight = in_flight
        if in_flight:
            self.message = (
                f"{config_name}'s {_PERIOD_WORDS[period]} token limit ({limit:,}) is held by calls in flight; "
                f"try again in a few seconds"
            )
        else:
            self.message = (
                f"{config_name} is over its {_PERIOD_WORDS[period]} token limit ({limit:,}); "
                f"it resets at {resets_at:%Y-%m-%d %H:%M %Z}"
            )
        super().__init__(self.message)

    def retry_at(self) -> datetime:
        """When trying again makes sense: in a few seconds when calls in flight hold the room, else the reset."""
        if self.in_flight:
            return timezone.now() + timedelta(seconds=IN_FLIGHT_RETRY_SECONDS)
        return self.resets_at

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Reservation:
    """Tokens held for one call; hand it back with the attempt to settle it."""

    id: int
    config_id: int
    tokens: int
    month_counter_id: int
    day_counter_id: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Hold:
    """What a reservation is for: the call, so that one that expires unsettled can be charged as a usage row."""

    request_id: str = ""
    user_id: int | None = None
    task: str = ""
    model: str = ""
    attempt: int = 1
    input_tokens: int = 0  # the input estimate within the reserved tokens


def _limits(config: ProviderConfig) -> tuple[tuple[str, int | None], ...]:
    # Month before day: the lock order, and a refused month is the later (and so the truer) reset to report.
    return ((Period.MONTH, config.monthly_token_limit), (Period.DAY, config.daily_token_limit))


def has_limits(config: ProviderConfig | None) -> bool:
    return config is not None and (config.daily_token_limit is not None or config.monthly_token_limit is not None)


def _limit_exceeded(
    config: ProviderConfig, period: str, limit: int, windows: Windows, *, in_flight: bool = False
) -> LimitExceeded:
    return LimitExceeded(
        config_id=config.pk,
        config_name=config.display_name,
        period=period,
        limit=limit,
        resets_at=window_resets_at(period, windows.start(period)),
        in_flight=in_flight,
    )


# --- Reserving -------------------------------------------------------------------------------------------------


class _Reserving:
    """The statements of one reservation, and what their results mean."""

    def __init__(self, config: ProviderConfig, tokens: int, hold: Hold, now: datetime):
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        self.config, self.tokens = config, tokens
        self.windows = windows = Windows.at(now)
        for period, limit in _limits(config):  # what could never fit is refused without a query
            if limit is not None and tokens > limit:
                raise _limit_exceeded(config, period, limit, windows)
        self.id = secrets.randbits(63)
        self.expires_at = now + timedelta(seconds=settings.TOKEN_RESERVATION_TTL_SECONDS)
        params = {
            "id": self.id,
            "config": config.pk,
            "month_start": windows.month,
            "day_start": windows.day,
            "month_limit": config.monthly_token_limit,
            "day_limit": config.daily_token_limit,
            "tokens": tokens,
            "expires_at": self.expires_at,
            "request_id": hold.request_id,
            "user_id": hold.user_id,
            "task": hold.task,
            "model": hold.model or config.model_name,
            "attempt": hold.attempt,
            "input_tokens": min(hold.input_tokens, tokens),
        }
        self.statements = [
            (_COUNTERS_CREATE, params),
            (_COUNTERS_LOCK, params),
            (_RESERVATION_CREATE, params),
            (_RESERVATION_COUNT, params),
        ]

    def outcome(self, results: list[db.Rows]) -> Reservation:
        _created, counters, reserved, _counted = results
        if not reserved:
            raise self._refusal(counters)
        month_counter_id, day_counter_id = reserved[0]
        return Reservation(
            id=self.id,
            config_id=self.config.pk,
            tokens=self.tokens,
            month_counter_id=month_counter_id,
            day_counter_id=day_counter_id,
            expires_at=self.expires_at,
        )

    def _refusal(self, counters: db.Rows) -> LimitExceeded:
        standing = {period: (used, reserved) for period, used, reserved in counters}
        for period, limit in _limits(self.config):
            used, reserved = standing.get(period, (0, 0))
            if limit is not None and used + reserved + self.tokens > limit:
                in_flight = used + self.tokens <= limit  # what is missing is held by calls in flight
                return _limit_exceeded(self.config, period, limit, self.windows, in_flight=in_flight)
        raise RuntimeError(f"no reservation made for config {self.config.pk}, yet both windows had room")


def tokens_reserve(
    *, config: ProviderConfig, tokens: int, hold: Hold = Hold(), now: datetime | None = None
) -> Reservation | None:
    """Hold `tokens` against the config's day and month windows, both or neither, or raise `LimitExceeded`.

    Returns None, without a query, when the config has no limits. Both windows are counted even when only one
    has a limit, so a limit set later in the window starts from the true figure. One transaction on the
    caller's connection (`tokens_reserve_async` is the request path's face of the same statements).
    """
    if not has_limits(config):
        return None
    now = now or timezone.now()
    _sweep_if_due(now, in_background=False)
    reserving = _Reserving(config, tokens, hold, now)
    return reserving.outcome(db.execute_sync(reserving.statements))


async def tokens_reserve_async(
    *, config: ProviderConfig, tokens: int, hold: Hold = Hold(), now: datetime | None = None
) -> Reservation | None:
    """`tokens_reserve` from the event loop (one round trip on PostgreSQL, shared with the reservations other
    requests make at the same moment).

    A caller that goes away meanwhile (the client left) gets its cancellation at once, and the reservation, if
    it is made all the same, is given back: recorded as an aborted attempt of no tokens, instead of being left
    to expire and be charged as unsettled."""
    if not has_limits(config):
        return None
    reserving = asyncio.ensure_future(_reserve(config, tokens, hold, now or timezone.now()))
    try:
        return await asyncio.shield(reserving)
    except asyncio.CancelledError:
        reserving.add_done_callback(functools.partial(_give_back, config=config, hold=hold))
        raise


async def _reserve(config: ProviderConfig, tokens: int, hold: Hold, now: datetime) -> Reservation:
    _sweep_if_due(now, in_background=True)
    reserving = _Reserving(config, tokens, hold, now)
    try:
        return reserving.outcome(await db.execute_shared(reserving.statements, order=config.pk))
    except IntegrityError as error:
        if db.violated_constraint(error) != _RESERVATION_KEY:
            raise
    # Sent again after the connection was lost while PostgreSQL committed: the first sending reserved.
    [rows] = await db.execute([(_RESERVATION_READ, [reserving.id])])
    return reserving.outcome([[], [], rows, []])


_giving_back: set[asyncio.Future] = set()  # the loop holds tasks only weakly


def _give_back(reserving: asyncio.Future, *, config: ProviderConfig, hold: Hold) -> None:
    if reserving.cancelled() or reserving.exception() is not None:
        return
    record = attempt_build(
        request_id=hold.request_id,
        user_id=hold.user_id,
        task=hold.task,
        config=config,
        provider_type=config.provider_type,
        model=hold.model or config.model_name,
        attempt=hold.attempt,
        outcome=Outcome.ABORTED,
        usage=None,
        latency_ms=0,
        streamed=False,
    )
    task = asyncio.ensure_future(shielded(attempt_save_async(Attempt(record, reserving.result(), config))))
    _giving_back.add(task)
    task.add_done_callback(_giving_back.discard)


# --- Recording -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    """One attempt to record: its costed row (`attempt_build`), its reservation and its config's health."""

    record: UsageRecord
    reservation: Reservation | None = None
    config: ProviderConfig | None = None
    known_failures: int | None = None  # consecutive failures when the config was read; 0 skips a needless reset
    total: int = field(init=False)
    health: str | None = field(init=False)  # "failure", "reset" or None

    def __post_init__(self) -> None:
        self.total = self.record.total_tokens
        self.health = _health_change(self.config, self.record.outcome, self.record.error_type, self.known_failures)

    @property
    def counts_without_reservation(self) -> bool:
        return self.reservation is None and self.total > 0 and has_limits(self.config)

    def health_statement(self) -> tuple[str, list] | None:
        if self.health == "reset":
            return _COOLDOWN_RESET, [self.config.pk]
        if self.health == "failure":
            return _COOLDOWN_FAILURE, _failure_params(self.config.pk, self.record.error_type, self.record.created_at)
        return None


class _Recording:
    """The statements that record several attempts in one transaction (see the module docstring), and what
    their results mean."""

    def __init__(self, attempts: list[Attempt]):
        self.attempts = attempts
        statements: list[db.Statement] = [(_RECEIPT, [secrets.randbits(63), timezone.now()])]
        reserved = sorted({attempt.reservation.id for attempt in attempts if attempt.reservation is not None})
        if reserved:
            statements.append((_reservations_lock(len(reserved)), reserved))
        # Each counter: the tokens of its attempts in, their reservations out; by config, month before day (the
        # lock order reservations follow too).
        counting: dict[tuple[int, int, int], tuple[int, list[int]]] = {}  # (config, 0 month/1 day, id) -> ...
        for attempt in attempts:
            reservation = attempt.reservation
            if reservation is None:
                continue
            for order, counter_id in ((0, reservation.month_counter_id), (1, reservation.day_counter_id)):
                key = (reservation.config_id, order, counter_id)
                tokens, ids = counting.get(key, (0, []))
                counting[key] = (tokens + attempt.total, [*ids, reservation.id])
        counters: list[tuple[tuple, db.Statement, tuple[int, ProviderConfig | None]]] = [
            (key, (_counter_settle(len(ids)), [tokens, *ids, key[2]]), (tokens, None))
            for key, (tokens, ids) in counting.items()
        ]
        for attempt in attempts:
            if attempt.counts_without_reservation:
                windows = Windows.at(attempt.record.created_at)
                for order, period in enumerate((Period.MONTH, Period.DAY)):
                    params = [attempt.config.pk, period.value, windows.start(period), attempt.total]
                    statement = (_COUNTER_ADD_USED, params)
                    counters.append(((attempt.config.pk, order, 0), statement, (attempt.total, attempt.config)))
        counters.sort(key=lambda counter: counter[0])
        configs = {attempt.reservation.config_id: attempt.config for attempt in attempts if attempt.reservation}
        statements.extend(statement for _key, statement, _counted in counters)
        self.counted: list[tuple[int, ProviderConfig | None]] = [counted for _key, _statement, counted in counters]
        self.configs = configs
        self.counting = range(len(statements) - len(self.counted), len(statements))
        if reserved:
            statements.append((_reservations_delete(len(reserved)), reserved))
        self.inserts = range(len(statements), len(statements) + len(attempts))
        statements.extend(db.insert_statement(attempt.record) for attempt in attempts)
        statements.extend(rollup_statements(records=[attempt.record for attempt in attempts]))
        health = [attempt for attempt in attempts if attempt.health is not None]
        for attempt in sorted(health, key=lambda attempt: attempt.config.pk):
            statements.append(attempt.health_statement())
        self.statements = statements

    def finish(self, results: list[db.Rows]) -> tuple[list[UsageRecord], list[db.Statement]]:
        """The saved rows (with their ids), and the statements of the budget alerts they raised, if any."""
        records = []
        for attempt, position in zip(self.attempts, self.inserts, strict=True):
            record = attempt.record
            record.pk = results[position][0][0]
            record._state.adding = False
            record._state.db = "default"
            records.append(record)
        alerts: list[BudgetAlert] = []
        for position, (tokens, config) in zip(self.counting, self.counted, strict=True):
            for config_id, period, window_start, used, thresholds in results[position]:
                config = config or self.configs.get(config_id)
                alerts += budget_crossings(
                    config=config, counters=[(period, window_start, used, thresholds)], tokens=tokens
                )
        if alerts:
            logger.info("budget alerts noted: %s", [(a.provider_config_id, a.period, a.threshold) for a in alerts])
        return records, [db.insert_statement(alert, on_conflict_do_nothing=True) for alert in alerts]


def attempt_record(
    *,
    reservation: Reservation | None,
    config: ProviderConfig | None,
    known_failures: int | None = None,
    **row: Any,
) -> UsageRecord:
    """Record one provider attempt, costed (`attempt_build(**row)`); settle its reservation and note the config's
    health, in one transaction on the caller's connection. Settling never refuses: the tokens are spent.

    Health: "error" with an error type in COOLDOWN_ERROR_TYPES counts a failure; "success" and "invalid_output"
    (the provider did answer) reset the count, unless `known_failures` (read with the candidates) is 0;
    "aborted" and "unsettled" do neither.
    """
    record = attempt_build(config=config, **row)
    return attempt_save(record, reservation=reservation, config=config, known_failures=known_failures)


def attempt_save(
    record: UsageRecord,
    *,
    reservation: Reservation | None,
    config: ProviderConfig | None,
    known_failures: int | None = None,
) -> UsageRecord:
    """Save a row from `attempt_build` as `attempt_record` does."""
    attempt_observe(record)  # Prometheus: in memory, whether or not the recording succeeds
    recording = _Recording([Attempt(record, reservation, config, known_failures)])
    [saved], alerts = recording.finish(db.execute_sync(recording.statements))
    if alerts:
        db.execute_sync(alerts)
    return saved


async def attempt_save_async(attempt: Attempt, *, patient: bool = False) -> UsageRecord:
    """Save an attempt from the event loop, with the attempts saved at the same time (`Batches`: one transaction
    for all of them). A `patient` save (one nobody waits for: after the response) may wait up to ATTEMPTS_LINGER
    for company. While the database cannot be reached, it tries again, backing off, for up to
    settings.USAGE_SAVE_RETRY_SECONDS; raises what kept it from being saved after that."""
    attempt_observe(attempt.record)  # Prometheus: in memory, whether or not the recording succeeds
    batches = loop_batches("usage", _attempts_batches)
    delay, deadline = 0.05, time.monotonic() + settings.USAGE_SAVE_RETRY_SECONDS
    while True:
        try:
            return await batches.run(attempt, patient=patient)
        except DatabaseError as error:
            if not db.is_unavailable(error) or time.monotonic() + delay > deadline:
                raise
            logger.warning("The database is unreachable; saving usage row %s again in %.2f s", attempt.record, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _attempts_batches() -> Batches:
    # One transaction at a time: the attempts that finish meanwhile go together in the next (a transaction's
    # rows are the ones every call updates, so concurrent ones would only queue on them in PostgreSQL).
    return Batches(attempts_save_async, max_in_flight=1, linger=ATTEMPTS_LINGER)


async def attempts_save_async(attempts: list[Attempt]) -> list[UsageRecord | Exception]:
    """Save attempts in one transaction; return, in order, each saved row or what kept it from being saved. If
    the transaction fails for a reason other than the database being unreachable, each is saved on its own, so
    that one bad attempt cannot lose the others."""
    recording = _Recording(attempts)
    try:
        records, alerts = recording.finish(await db.execute(recording.statements))
    except DatabaseError as error:
        if isinstance(error, IntegrityError) and db.violated_constraint(error) == _RECEIPT_KEY:
            # Sent again after the connection was lost while PostgreSQL committed: recorded once already (the
            # rows' ids and any budget alert they raised are what is lost).
            logger.warning("%d usage rows were recorded before the connection was lost", len(attempts))
            return [attempt.record for attempt in attempts]
        if len(attempts) == 1 or db.is_unavailable(error):
            return [error] * len(attempts)
        logger.warning("Recording %d attempts together failed; saving each on its own", len(attempts), exc_info=True)
        return [(await attempts_save_async([attempt]))[0] for attempt in attempts]
    if alerts:
        try:
            await db.execute(alerts)
        except DatabaseError:  # the attempts are saved; an alert lost is logged, not raised
            logger.exception("Could not note %d budget alerts", len(alerts))
    return records


def attempt_build(
    *,
    request_id: str,
    user_id: int | None,
    task: str,
    config: ProviderConfig | None,
    provider_type: str,
    model: str,
    attempt: int,
    outcome: str,
    error_type: str = "",
    usage: TokenUsage | None,
    latency_ms: int,
    streamed: bool,
    now: datetime | None = None,
) -> UsageRecord:
    """The usage row of one attempt, checked and costed, not saved (no query)."""
    outcome = Outcome(outcome)
    error_type = ErrorType(error_type).value if error_type else ""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    now = now or timezone.now()
    usage = usage or TokenUsage()
    model = model or (config.model_name if config is not None else "")
    quote = price_quote(provider_type=provider_type, model=model, usage=usage, config=config, at=now)
    return UsageRecord(
        created_at=now,
        request_id=request_id,
        user_id=user_id,
        task=task,
        provider_config_id=config.pk if config is not None else None,
        provider_type=provider_type,
        model=model,
        attempt=attempt,
        outcome=outcome,
        error_type=error_type,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_usd=quote.cost_usd,
        priced=quote.priced,
        price_source=quote.source,
        latency_ms=max(int(latency_ms), 0),
        streamed=streamed,
    )


def _health_change(
    config: ProviderConfig | None, outcome: str, error_type: str, known_failures: int | None
) -> str | None:
    if config is None:
        return None
    if outcome in (Outcome.SUCCESS, Outcome.INVALID_OUTPUT):
        return None if known_failures == 0 else "reset"
    if outcome == Outcome.ERROR and error_type in COOLDOWN_ERROR_TYPES:
        return "failure"
    return None


# --- Expired reservations --------------------------------------------------------------------------------------


def reservations_expire(*, now: datetime | None = None) -> int:
    """Charge every reservation that expired unsettled (its worker died mid-call) as a usage row of outcome
    "unsettled" costing what was reserved, and release it, exactly once; return how many there were.

    One transaction: the expired reservations are locked, then recorded as `_Recording` records any attempt, so
    a settlement racing this sweep finds its reservation either still there (and waits) or gone.
    """
    from providers.models import ProviderConfig  # providers is below usage; imported here to keep start-up light

    now = now or timezone.now()
    with transaction.atomic():
        [_forgotten, expired] = db.execute_sync([(_RECEIPTS_FORGET, [now - RECEIPTS_KEPT]), (_EXPIRED_LOCK, [now])])
        if not expired:
            return 0
        configs = ProviderConfig.objects.in_bulk({row[1] for row in expired})
        attempts = []
        for row in expired:
            reservation_id, config_id, tokens, input_tokens, request_id, user_id, task, model, attempt = row[:9]
            month, day, expires_at = row[9:]
            config = configs[config_id]
            record = attempt_build(
                request_id=request_id or f"reservation-{reservation_id}",
                user_id=user_id,
                task=task or "",
                config=config,
                provider_type=config.provider_type,
                model=model or config.model_name,
                attempt=attempt,
                outcome=Outcome.UNSETTLED,
                usage=TokenUsage(input_tokens=input_tokens, output_tokens=tokens - input_tokens, estimated=True),
                latency_ms=0,
                streamed=False,
                now=now,
            )
            reservation = Reservation(reservation_id, config_id, tokens, month, day, db.as_datetime(expires_at))
            attempts.append(Attempt(record, reservation, config))
        recording = _Recording(attempts)
        records, alerts = recording.finish(db.execute_sync(recording.statements))
        if alerts:
            db.execute_sync(alerts)
    for record in records:
        attempt_observe(record)
    logger.warning("Charged %d reservations that expired unsettled", len(records))
    return len(records)


def _sweep_if_due(now: datetime, *, in_background: bool) -> None:
    global _next_sweep
    # Per process and unlocked: two sweeps at once only cost a query; each reservation is charged exactly once.
    if time.monotonic() < _next_sweep:
        return
    _next_sweep = time.monotonic() + RESERVATION_SWEEP_INTERVAL_SECONDS
    if not in_background:
        reservations_expire(now=now)
        return
    task = asyncio.ensure_future(shielded(run_in_thread(_sweep_logged, now)))
    _sweeps.add(task)
    task.add_done_callback(_sweeps.discard)


_sweeps: set[asyncio.Future] = set()


def _sweep_logged(now: datetime) -> None:
    try:
        reservations_expire(now=now)
    except DatabaseError:
        logger.exception("Sweeping expired token reservations failed; the next sweep tries again")


# --- Cooldowns and reads ---------------------------------------------------------------------------------------


def provider_failure_note(*, config_id: int, error_type: str, now: datetime | None = None) -> int:
    """Count one failure of a config; at PROVIDER_COOLDOWN_FAILURES in a row it cools down.

    Returns the consecutive failures now counted, or 0 for an error type that does not count
    (see COOLDOWN_ERROR_TYPES). One statement (an INSERT ... ON CONFLICT DO UPDATE).
    """
    if error_type not in COOLDOWN_ERROR_TYPES:
        return 0
    [rows] = db.execute_sync([(_COOLDOWN_FAILURE, _failure_params(config_id, error_type, now or timezone.now()))])
    return rows[0][0]


def _failure_params(config_id: int, error_type: str, now: datetime) -> list:
    threshold = settings.PROVIDER_COOLDOWN_FAILURES
    until = now + timedelta(seconds=settings.PROVIDER_COOLDOWN_SECONDS)
    first_until = until if threshold <= 1 else None
    return [config_id, first_until, error_type, now, threshold, until]


def provider_success_note(*, config_id: int) -> bool:
    """Reset a config's failure count and end its cooldown; returns whether there was anything to reset.

    One UPDATE that changes no row (and so writes nothing) unless the config had failures.
    """
    [rows] = db.execute_sync([(_COOLDOWN_RESET, [config_id])])
    return bool(rows)


def configs_cooling_down(*, config_ids: list[int], now: datetime | None = None) -> set[int]:
    """Return the ids among `config_ids` that are cooling down. One query."""
    if not config_ids:
        return set()
    return set(
        ProviderCooldown.objects.filter(provider_config_id__in=config_ids, until__gt=now or timezone.now()).values_list(
            "provider_config_id", flat=True
        )
    )


def configs_with_cooldown(queryset: QuerySet, *, now: datetime | None = None) -> QuerySet:
    """Annotate ProviderConfigs with `cooling_down` (bool) and `known_failures` (int), in the same query.

    E.g. `configs_with_cooldown(ProviderConfig.objects.serving(task))` for the router's candidates; hand
    `known_failures` on to `attempt_record`.
    """
    return queryset.annotate(
        cooling_down=Case(
            When(cooldown__until__gt=now or timezone.now(), then=Value(True)),
            default=Value(False),
            output_field=BooleanField(),
        ),
        known_failures=Coalesce("cooldown__consecutive_failures", Value(0)),
    )


def usage_for_config(*, config: ProviderConfig, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Return today's and this month's tokens for a config: used, reserved, limit, window start, reset time.

    Keyed by "day" and "month". Counts only what went through the counters, i.e. since the config had a
    limit. One query.
    """
    windows = Windows.at(now or timezone.now())
    counters = {
        (counter.period, counter.window_start): counter
        for counter in TokenCounter.objects.filter(
            provider_config=config, period__in=[Period.DAY, Period.MONTH], window_start__in=[windows.day, windows.month]
        )
    }
    result: dict[str, dict[str, Any]] = {}
    for period, limit in _limits(config):
        start = windows.start(period)
        counter = counters.get((period, start))
        result[str(period)] = {
            "window_start": start,
            "resets_at": window_resets_at(period, start),
            "used": counter.used if counter else 0,
            "reserved": counter.reserved if counter else 0,
            "limit": limit,
        }
    return result
