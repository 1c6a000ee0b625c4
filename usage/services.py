"""Token limits, usage records and provider cooldowns.

Every function here is synchronous and does its own database work in its own transaction, so async callers can
run it with `sync_to_async(..., thread_sensitive=False)`. Everything that must hold across processes (limits,
reservations, failure counts) is counted in the database by single conditional statements, never read and
written back in Python.

The hot path (`tokens_reserve`, `attempt_record`) uses a few hand-written SQL statements instead of the ORM:
the whole gateway has about 3 ms of CPU per request, and compiling an ORM query costs 50-100 µs of it. The SQL
is plain enough to run unchanged on PostgreSQL and SQLite (3.35 or later, for RETURNING). On PostgreSQL each
statement is prepared once per connection (`aditus.db.prepared`): planning them was most of the database's work.

On PostgreSQL a reservation is one statement and recording an attempt one message of statements (one implicit
transaction): the counter and rollup rows every call updates stay locked only while PostgreSQL runs and commits
them, never across a round trip to this process (see `_reserve_in_one_statement`). Commits stay synchronous
(durable): `synchronous_commit = off` would save about 0.15 ms per commit, but a crash of the database server
could then lose the last few hundred milliseconds of committed work, i.e. usage rows (the audit of what calls
cost) together with their counter updates, which share their transaction; with the locks no longer held across
round trips, the commit's flush is a small part of the time a row stays locked, so the saving is not worth it.

Lock order: a transaction that touches token counters locks month counters before day counters (the expiry
sweep: all its month counters in id order, then all its day counters), so concurrent reservations, settlements
and expiries cannot deadlock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from typing import TYPE_CHECKING, Any

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import BooleanField, Case, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from aditus.db import answer_or_error, results_in_one_message, results_in_one_message_async
from providers.clients.base import ErrorType, TokenUsage
from usage.alerts import budget_crossings_record
from usage.metrics import attempt_observe
from usage.models import (
    BudgetPolicy,
    Outcome,
    Period,
    ProviderCooldown,
    TokenCounter,
    TokenReservation,
    UsageRecord,
)
from usage.pricing import price_quote
from usage.rollups import rollup_add, rollup_statements, rollups_enabled

if TYPE_CHECKING:
    from providers.models import ProviderConfig

logger = logging.getLogger(__name__)

# Errors that count toward a cooldown: every failure that says something about the provider config rather than
# about the request. A bad request would fail the same way anywhere, so it does not count. Authentication,
# permission and unknown-model errors do: a config with a revoked key is skipped for a while instead of costing
# every request a round trip.
COOLDOWN_ERROR_TYPES: frozenset[str] = frozenset(ErrorType) - {ErrorType.BAD_REQUEST, ErrorType.LOCAL}

# How often one process sweeps expired reservations from inside `tokens_reserve`.
RESERVATION_SWEEP_INTERVAL_SECONDS = 60.0
_next_sweep = 0.0  # time.monotonic() after which the next sweep is due

# Table names are spelled out so the SQL reads whole; a test checks them against the models' db_table.
_COUNTER_RESERVE = (
    "UPDATE usage_tokencounter SET reserved = reserved + %s "
    "WHERE provider_config_id = %s AND period = %s AND window_start = %s AND used + reserved + %s <= %s "
    "RETURNING id"
)
_COUNTER_RESERVE_UNLIMITED = (
    "UPDATE usage_tokencounter SET reserved = reserved + %s "
    "WHERE provider_config_id = %s AND period = %s AND window_start = %s RETURNING id"
)
_COUNTER_CREATE = (
    "INSERT INTO usage_tokencounter (provider_config_id, period, window_start, used, reserved) "
    "VALUES (%s, %s, %s, 0, 0) ON CONFLICT DO NOTHING"
)
# Settling returns what budget alerts need (usage.alerts.budget_crossings_record): the new total, and the config's
# own alert thresholds (NULL without a BudgetPolicy) from the same statement, so no extra round trip.
_COUNTER_SETTLE = (
    "UPDATE usage_tokencounter SET reserved = reserved - %s, used = used + %s WHERE id = %s "
    "RETURNING period, window_start, used, (SELECT alert_thresholds FROM usage_budgetpolicy "
    "WHERE usage_budgetpolicy.provider_config_id = usage_tokencounter.provider_config_id)"
)
_COUNTER_RELEASE = "UPDATE usage_tokencounter SET reserved = reserved - %s WHERE id = %s"
_COUNTER_ADD_USED = (
    "INSERT INTO usage_tokencounter (provider_config_id, period, window_start, used, reserved) "
    "VALUES (%s, %s, %s, %s, 0) "
    "ON CONFLICT (provider_config_id, period, window_start) "
    "DO UPDATE SET used = usage_tokencounter.used + excluded.used "
    "RETURNING period, window_start, used, (SELECT alert_thresholds FROM usage_budgetpolicy "
    "WHERE usage_budgetpolicy.provider_config_id = usage_tokencounter.provider_config_id)"
)
_RESERVATION_CREATE = (
    "INSERT INTO usage_tokenreservation (provider_config_id, day_counter_id, month_counter_id, tokens, expires_at) "
    "VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
_RESERVATION_CLAIM = "DELETE FROM usage_tokenreservation WHERE id = %s"
_RESERVATIONS_CLAIM_EXPIRED = (
    "DELETE FROM usage_tokenreservation WHERE expires_at <= %s RETURNING day_counter_id, month_counter_id, tokens"
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
    "WHERE provider_config_id = %s AND consecutive_failures > 0"
)
# PostgreSQL: a reservation in one statement (see `_reserve_in_one_statement`). Both counter rows are locked, month
# first (the lock order), and read as they are once locked; both are updated and the reservation inserted only if
# both rows exist and the tokens fit both windows, else the statement changes nothing and returns no row.
_RESERVE_ONE_STATEMENT = (
    "WITH locked AS (SELECT id, period, used, reserved FROM usage_tokencounter "
    "WHERE provider_config_id = %(config)s AND ((period = %(month)s AND window_start = %(month_start)s) "
    "OR (period = %(day)s AND window_start = %(day_start)s)) ORDER BY period = %(day)s FOR UPDATE), "
    "fits AS (SELECT count(*) = 2 AND coalesce(bool_and(CASE WHEN period = %(month)s "
    "THEN %(month_limit)s::bigint IS NULL OR used + reserved + %(tokens)s <= %(month_limit)s::bigint "
    "ELSE %(day_limit)s::bigint IS NULL OR used + reserved + %(tokens)s <= %(day_limit)s::bigint END), false) AS ok "
    "FROM locked), "
    "updated AS (UPDATE usage_tokencounter SET reserved = usage_tokencounter.reserved + %(tokens)s FROM locked "
    "WHERE usage_tokencounter.id = locked.id AND (SELECT ok FROM fits) "
    "RETURNING usage_tokencounter.id, usage_tokencounter.period) "
    "INSERT INTO usage_tokenreservation (provider_config_id, day_counter_id, month_counter_id, tokens, expires_at) "
    "SELECT %(config)s, (SELECT id FROM updated WHERE period = %(day)s), "
    "(SELECT id FROM updated WHERE period = %(month)s), %(tokens)s, %(expires_at)s WHERE (SELECT ok FROM fits) "
    "RETURNING id, month_counter_id, day_counter_id"
)
# PostgreSQL: claim a reservation and settle both its counters in one statement (month first, as above); no row
# when the reservation was already gone (expired and released).
_SETTLE_ONE_STATEMENT = (
    "WITH claimed AS (DELETE FROM usage_tokenreservation WHERE id = %s RETURNING id), "
    "m AS (UPDATE usage_tokencounter SET reserved = reserved - %s, used = used + %s FROM claimed "
    "WHERE usage_tokencounter.id = %s RETURNING period, window_start, used, (SELECT alert_thresholds "
    "FROM usage_budgetpolicy WHERE usage_budgetpolicy.provider_config_id = usage_tokencounter.provider_config_id)), "
    "d AS (UPDATE usage_tokencounter SET reserved = reserved - %s, used = used + %s FROM claimed "
    "WHERE usage_tokencounter.id = %s AND EXISTS (SELECT 1 FROM m) RETURNING period, window_start, used, "
    "(SELECT alert_thresholds FROM usage_budgetpolicy "
    "WHERE usage_budgetpolicy.provider_config_id = usage_tokencounter.provider_config_id)) "
    "SELECT * FROM m UNION ALL SELECT * FROM d"
)
HAND_WRITTEN_SQL_TABLES = {
    "usage_tokencounter": TokenCounter,
    "usage_tokenreservation": TokenReservation,
    "usage_providercooldown": ProviderCooldown,
    "usage_budgetpolicy": BudgetPolicy,
}

_PERIOD_WORDS = {Period.DAY: "daily", Period.MONTH: "monthly"}


class LimitExceeded(Exception):
    """A config has too few tokens left in one of its windows for the call."""

    def __init__(self, *, config_id: int, config_name: str, period: str, limit: int, resets_at: datetime):
        self.config_id = config_id
        self.period = period
        self.limit = limit
        self.resets_at = resets_at
        self.message = (
            f"{config_name} is over its {_PERIOD_WORDS[period]} token limit ({limit:,}); "
            f"it resets at {resets_at:%Y-%m-%d %H:%M %Z}"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Reservation:
    """Tokens held for one call; hand it back to `attempt_record` to settle it."""

    id: int
    config_id: int
    tokens: int
    month_counter_id: int
    day_counter_id: int
    expires_at: datetime


@dataclass(frozen=True)
class Windows:
    """The calendar windows a moment falls in, in settings.TIME_ZONE."""

    day: date
    month: date

    @classmethod
    def at(cls, moment: datetime) -> Windows:
        today = timezone.localtime(moment, timezone.get_default_timezone()).date()
        return cls(day=today, month=today.replace(day=1))

    def start(self, period: str) -> date:
        return self.day if period == Period.DAY else self.month


def window_resets_at(period: str, start: date) -> datetime:
    """Return when the window of `period` that starts on `start` ends: the next local midnight or 1st."""
    if period == Period.DAY:
        following = start + timedelta(days=1)
    else:
        following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime.combine(following, clock_time.min, tzinfo=timezone.get_default_timezone())


def _limits(config: ProviderConfig) -> tuple[tuple[str, int | None], ...]:
    # Month before day: the lock order, and a refused month is the later (and so the truer) reset to report.
    return ((Period.MONTH, config.monthly_token_limit), (Period.DAY, config.daily_token_limit))


def _has_limits(config: ProviderConfig | None) -> bool:
    return config is not None and (config.daily_token_limit is not None or config.monthly_token_limit is not None)


def _limit_exceeded(config: ProviderConfig, period: str, limit: int, windows: Windows) -> LimitExceeded:
    return LimitExceeded(
        config_id=config.pk,
        config_name=config.display_name,
        period=period,
        limit=limit,
        resets_at=window_resets_at(period, windows.start(period)),
    )


def _db_date(value: date) -> Any:
    return connection.ops.adapt_datefield_value(value)


def _db_datetime(value: datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def tokens_reserve(*, config: ProviderConfig, tokens: int, now: datetime | None = None) -> Reservation | None:
    """Hold `tokens` against the config's day and month windows, both or neither, or raise `LimitExceeded`.

    Returns None, without touching the database, when the config has no limits, and refuses without a query
    what could never fit. Otherwise one transaction of three statements (two conditional UPDATEs and an
    INSERT); the first call in a new window, and a refusal, add an INSERT and a retry for that window. Both
    windows are counted even when only one has a limit, so a limit set later in the window starts from the
    true figure. Every RESERVATION_SWEEP_INTERVAL_SECONDS a process also sweeps expired reservations first.
    """
    if not _has_limits(config):
        return None
    now = now or timezone.now()
    windows = Windows.at(now)
    _check_could_fit(config, tokens, windows)
    _sweep_if_due(now)
    expires_at = now + timedelta(seconds=settings.TOKEN_RESERVATION_TTL_SECONDS)
    if connection.vendor == "postgresql":
        reservation = _reserve_in_one_statement(config, tokens, windows, expires_at)
        if reservation is not None:
            return reservation
        # A window refused or has no counter row yet: the general path below creates it, or says which refused.
    return _reserve_in_a_transaction(config, tokens, windows, expires_at)


# What `tokens_reserve_on_loop` answers when only `tokens_reserve` can say.
RESERVE_IN_A_THREAD = object()


async def tokens_reserve_many_on_loop(
    requests: list[tuple[ProviderConfig, int]], *, now: datetime | None = None
) -> list[Reservation | None | object]:
    """`tokens_reserve_many`'s common case from the event loop: the one-statement reservations in one message
    (one transaction, config order), sent over the loop's connection (`aditus.db.results_in_one_message_async`).

    Returns, in order, each one's reservation, None for a config without limits, or RESERVE_IN_A_THREAD where
    only `tokens_reserve` can say: a refusal (it names the window and its reset), a window's first reservation
    (it creates the counter row), the periodic sweep being due, or the message failing. Nothing is reserved for
    those, unless the connection broke after PostgreSQL committed: those reservations then expire unused.
    """
    if _sweep_due():
        return [RESERVE_IN_A_THREAD if _has_limits(config) else None for config, _ in requests]
    plan = _ReservationMessage.of(requests, now or timezone.now())
    answers = [RESERVE_IN_A_THREAD if isinstance(answer, Exception) else answer for answer in plan.answers]
    if not plan.to_send:
        return answers
    try:
        rows = await results_in_one_message_async(plan.statements())
    except psycopg.Error:
        rows = [[] for _ in plan.to_send]
    for position, reservation in plan.reservations(rows):
        answers[position] = reservation if reservation is not None else RESERVE_IN_A_THREAD
    return answers


def tokens_reserve_many(
    requests: list[tuple[ProviderConfig, int]], *, now: datetime | None = None
) -> list[Reservation | None | Exception]:
    """`tokens_reserve` for several (config, tokens) at once; return, in order, each one's reservation (None for
    a config without limits) or what `tokens_reserve` would raise (`LimitExceeded`).

    On PostgreSQL the one-statement reservations of all of them go in one message, one transaction, in config
    order (the lock order); a reservation that statement cannot make (a refusal, a window without a counter row
    yet) then takes `tokens_reserve`'s own path. Elsewhere, `tokens_reserve` for each.
    """
    now = now or timezone.now()
    if connection.vendor != "postgresql" or len(requests) < 2:
        return [
            answer_or_error(lambda c=config, t=tokens: tokens_reserve(config=c, tokens=t, now=now))
            for config, tokens in requests
        ]
    plan = _ReservationMessage.of(requests, now)
    answers = plan.answers
    if not plan.to_send:
        return answers
    _sweep_if_due(now)
    for position, reservation in plan.reservations(results_in_one_message(plan.statements())):
        if reservation is None:  # refused, or a window without its counter row yet: `tokens_reserve` says which
            config, tokens = requests[position]
            reservation = answer_or_error(lambda c=config, t=tokens: tokens_reserve(config=c, tokens=t, now=now))
        answers[position] = reservation
    return answers


@dataclass(slots=True)
class _ReservationMessage:
    """The one-statement reservations of several requests, as `tokens_reserve_many` and its event-loop twin send
    them: in config order (the lock order), without the requests that need no statement."""

    requests: list[tuple[ProviderConfig, int]]
    windows: Windows
    expires_at: datetime
    answers: list  # per request so far: None (no limits; or sent), or the exception of what could never fit
    to_send: list[int]  # positions, in config order

    @classmethod
    def of(cls, requests: list[tuple[ProviderConfig, int]], now: datetime) -> _ReservationMessage:
        windows = Windows.at(now)
        answers: list = [None] * len(requests)
        to_send: list[int] = []
        for position, (config, tokens) in enumerate(requests):
            if _has_limits(config):
                answers[position] = answer_or_error(lambda c=config, t=tokens: _check_could_fit(c, t, windows))
                if answers[position] is None:
                    to_send.append(position)
        to_send.sort(key=lambda position: requests[position][0].pk)
        expires_at = now + timedelta(seconds=settings.TOKEN_RESERVATION_TTL_SECONDS)
        return cls(requests, windows, expires_at, answers, to_send)

    def statements(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            _reserve_statement(*self.requests[position], self.windows, self.expires_at) for position in self.to_send
        ]

    def reservations(self, rows: list[list[tuple]]):
        """(position, its reservation, or None where the statement made none) for each request sent."""
        for position, found in zip(self.to_send, rows, strict=True):
            config, tokens = self.requests[position]
            yield position, (_reservation_from_row(found[0], config, tokens, self.expires_at) if found else None)


def _check_could_fit(config: ProviderConfig, tokens: int, windows: Windows) -> None:
    """Refuse, without a query, what could never fit."""
    if tokens < 0:
        raise ValueError("tokens must not be negative")
    for period, limit in _limits(config):
        if limit is not None and tokens > limit:
            raise _limit_exceeded(config, period, limit, windows)


def _reserve_in_a_transaction(
    config: ProviderConfig, tokens: int, windows: Windows, expires_at: datetime
) -> Reservation:
    counter_ids: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        for period, limit in _limits(config):
            counter_ids[period] = _counter_reserve(cursor, config, period, limit, windows, tokens)
        cursor.execute(
            _RESERVATION_CREATE,
            [config.pk, counter_ids[Period.DAY], counter_ids[Period.MONTH], tokens, _db_datetime(expires_at)],
        )
        reservation_id = cursor.fetchone()[0]
    return Reservation(
        id=reservation_id,
        config_id=config.pk,
        tokens=tokens,
        month_counter_id=counter_ids[Period.MONTH],
        day_counter_id=counter_ids[Period.DAY],
        expires_at=expires_at,
    )


def _reserve_in_one_statement(
    config: ProviderConfig, tokens: int, windows: Windows, expires_at: datetime
) -> Reservation | None:
    """PostgreSQL: reserve in one statement, or return None if a window refused or has no counter row yet.

    One statement (committed on its own) keeps the counter rows locked only while PostgreSQL runs and commits
    it. As a transaction of several statements, each round trip back to this process extends the lock, and under
    load a thread waits milliseconds for the GIL before it sends the next: every reservation and settlement of
    the config queues behind that row, which capped a process at a few dozen calls a second.
    """
    [rows] = results_in_one_message([_reserve_statement(config, tokens, windows, expires_at)])
    if not rows:
        return None
    return _reservation_from_row(rows[0], config, tokens, expires_at)


def _reserve_statement(
    config: ProviderConfig, tokens: int, windows: Windows, expires_at: datetime
) -> tuple[str, dict[str, Any]]:
    return _RESERVE_ONE_STATEMENT, {
        "config": config.pk,
        "month": Period.MONTH.value,
        "day": Period.DAY.value,
        "month_start": windows.month,
        "day_start": windows.day,
        "month_limit": config.monthly_token_limit,
        "day_limit": config.daily_token_limit,
        "tokens": tokens,
        "expires_at": expires_at,
    }


def _reservation_from_row(row: tuple, config: ProviderConfig, tokens: int, expires_at: datetime) -> Reservation:
    reservation_id, month_counter_id, day_counter_id = row
    return Reservation(
        id=reservation_id,
        config_id=config.pk,
        tokens=tokens,
        month_counter_id=month_counter_id,
        day_counter_id=day_counter_id,
        expires_at=expires_at,
    )


def _counter_reserve(cursor, config: ProviderConfig, period: str, limit: int | None, windows: Windows, tokens: int):
    start = _db_date(windows.start(period))
    for first_try in (True, False):
        # The check and the reservation are one statement: the row lock makes concurrent callers take turns,
        # and each re-evaluates the condition against the row as the previous one left it.
        if limit is None:
            cursor.execute(_COUNTER_RESERVE_UNLIMITED, [tokens, config.pk, period, start])
        else:
            cursor.execute(_COUNTER_RESERVE, [tokens, config.pk, period, start, tokens, limit])
        row = cursor.fetchone()
        if row is not None:
            return row[0]
        if first_try:
            # No row yet for this window, or not enough room: create it if missing (a concurrent creator
            # wins harmlessly) and ask once more. Whether this INSERT added the row says nothing about the
            # first UPDATE, which may have run before another transaction's row became visible.
            cursor.execute(_COUNTER_CREATE, [config.pk, period, start])
    raise _limit_exceeded(config, period, limit, windows)


def reservations_expire(*, now: datetime | None = None) -> int:
    """Release every reservation that has expired, exactly once, and return how many there were.

    Deleting a reservation is the claim, so a settlement or another sweep racing this one cannot release the
    same tokens again. One DELETE and, when something expired, one UPDATE per counter, in one transaction.
    """
    now = now or timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_RESERVATIONS_CLAIM_EXPIRED, [_db_datetime(now)])
        claimed = cursor.fetchall()
        months: dict[int, int] = defaultdict(int)
        days: dict[int, int] = defaultdict(int)
        for day_counter_id, month_counter_id, tokens in claimed:
            months[month_counter_id] += tokens
            days[day_counter_id] += tokens
        for counters in (months, days):
            for counter_id in sorted(counters):
                cursor.execute(_COUNTER_RELEASE, [counters[counter_id], counter_id])
    return len(claimed)


def _sweep_due() -> bool:
    return time.monotonic() >= _next_sweep


def _sweep_if_due(now: datetime) -> None:
    global _next_sweep
    # Per process and unlocked: two threads sweeping at once only cost a query, the release stays exactly once.
    if not _sweep_due():
        return
    _next_sweep = time.monotonic() + RESERVATION_SWEEP_INTERVAL_SECONDS
    reservations_expire(now=now)


def attempt_record(
    *,
    reservation: Reservation | None,
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
    known_failures: int | None = None,
    now: datetime | None = None,
) -> UsageRecord:
    """Record one provider attempt, costed; settle its reservation and note the config's health.

    In one transaction: the reservation is claimed (deleted) and its tokens swapped for the actual total
    (input + output as billed) in both windows; if it had already expired and been released, or there was
    none for a config with limits, the actual total is still added to the current windows. Settling never
    refuses: the tokens are spent.

    Health: "error" with an error type in COOLDOWN_ERROR_TYPES counts a failure (`provider_failure_note`);
    "success" and "invalid_output" (the provider did answer) reset the count (`provider_success_note`);
    "aborted" does neither. So do not call those two for an attempt recorded here. Pass `known_failures`,
    the count read with the candidates (`configs_with_cooldown`), and a success with 0 skips the reset query.

    Queries: one INSERT when there is nothing to settle or note; with a reservation, one transaction of
    DELETE, two UPDATEs and the INSERT (plus one statement for health when needed). With USAGE_ROLLUPS_ENABLED
    (the default), always a transaction, ending with the two rollup upserts of `usage.rollups.rollup_add`.

    The same as `attempt_build` then `attempt_save`, which a caller may run apart (the costed row is known
    before anything is written).
    """
    record = attempt_build(
        request_id=request_id,
        user_id=user_id,
        task=task,
        config=config,
        provider_type=provider_type,
        model=model,
        attempt=attempt,
        outcome=outcome,
        error_type=error_type,
        usage=usage,
        latency_ms=latency_ms,
        streamed=streamed,
        now=now,
    )
    return attempt_save(record, reservation=reservation, config=config, known_failures=known_failures)


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
    """The usage row of one attempt, checked and costed, not saved (no query: see `attempt_record`)."""
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


def attempt_save(
    record: UsageRecord,
    *,
    reservation: Reservation | None,
    config: ProviderConfig | None,
    known_failures: int | None = None,
) -> UsageRecord:
    """Save a row from `attempt_build`, settling its reservation and noting the config's health (see
    `attempt_record`). Returns the row, saved."""
    writing = _Writing.of(record, reservation=reservation, config=config, known_failures=known_failures)
    if connection.vendor == "postgresql":
        _write_in_one_message([writing])
        return record
    now = record.created_at
    attempt_observe(record)  # Prometheus counters: in memory, whether or not the recording below succeeds
    total = writing.total
    if (
        reservation is None
        and not writing.count_without_reservation
        and writing.health is None
        and not rollups_enabled()
    ):
        record.save(force_insert=True)  # a single statement needs no transaction of its own
        return record

    with transaction.atomic():
        with connection.cursor() as cursor:
            counters: list[tuple] = []  # what _COUNTER_SETTLE or _COUNTER_ADD_USED returned for each window
            if reservation is not None:
                cursor.execute(_RESERVATION_CLAIM, [reservation.id])
                if cursor.rowcount == 1:
                    for counter_id in (reservation.month_counter_id, reservation.day_counter_id):
                        cursor.execute(_COUNTER_SETTLE, [reservation.tokens, total, counter_id])
                        counters.append(cursor.fetchone())
                elif total:
                    # Expired and released by a sweep: the tokens were still spent.
                    counters = _used_add(cursor, reservation.config_id, total, Windows.at(now))
            elif writing.count_without_reservation:
                counters = _used_add(cursor, config.pk, total, Windows.at(now))
            budget_crossings_record(config=config, counters=counters, tokens=total)

            for sql, params in writing.health_statements():
                cursor.execute(sql, params)
        record.save(force_insert=True)
        # Last, so the rollup rows every concurrent call of this bucket updates stay locked only for the commit.
        rollup_add(record=record)
    return record


def attempts_save(attempts: list[dict[str, Any]]) -> list[UsageRecord | Exception]:
    """Save several attempts, each given as the arguments of `attempt_save`; return, in order, each saved row or
    the exception that kept it from being saved.

    On PostgreSQL they go in one message, one transaction, with one rollup upsert per rollup row they share: a
    process recording many calls at once (`tasks.services.Batches`) pays one round trip, one commit and
    one lock of each contended row for all of them. If that transaction fails, each is saved on its own, so
    one bad attempt cannot lose the others. Elsewhere, or for one attempt, `attempt_save` for each.
    """
    if connection.vendor != "postgresql" or len(attempts) == 1:
        return [answer_or_error(lambda attempt=attempt: attempt_save(**attempt)) for attempt in attempts]
    writings = [_Writing.of(**attempt) for attempt in attempts]
    for writing in writings:
        attempt_observe(writing.record)  # Prometheus: in memory, whether or not the recording succeeds
    try:
        results, positions = _write_message(writings)
    except DatabaseError:
        # Rolled back whole: nothing of it was written.
        logger.warning("Recording %d attempts together failed; saving each on its own", len(writings), exc_info=True)
        return [
            answer_or_error(lambda writing=writing: _write_in_one_message([writing], observe=False)[0])
            for writing in writings
        ]
    return [
        answer_or_error(lambda writing=writing, position=position: _after_message(writing, results, position))
        for writing, position in zip(writings, positions, strict=True)
    ]


@dataclass(slots=True)
class _Writing:
    """One attempt's share of a recording message (`_write_in_one_message`)."""

    record: UsageRecord
    reservation: Reservation | None
    config: ProviderConfig | None
    total: int
    count_without_reservation: bool
    health: str | None

    @classmethod
    def of(
        cls,
        record: UsageRecord,
        *,
        reservation: Reservation | None,
        config: ProviderConfig | None,
        known_failures: int | None = None,
    ) -> _Writing:
        total = record.total_tokens
        return cls(
            record=record,
            reservation=reservation,
            config=config,
            total=total,
            count_without_reservation=reservation is None and total > 0 and _has_limits(config),
            health=_health_change(config, record.outcome, record.error_type, known_failures),
        )

    def health_statements(self) -> list[tuple[str, list]]:
        if self.health == "reset":
            return [(_COOLDOWN_RESET, [self.config.pk])]
        if self.health == "failure":
            return [
                (_COOLDOWN_FAILURE, _failure_params(self.config.pk, self.record.error_type, self.record.created_at))
            ]
        return []

    def counting_statements(self) -> list[tuple[str, list]]:
        """The settlement of the reservation, or the tokens added without one."""
        if self.reservation is not None:
            reservation, tokens = self.reservation, self.reservation.tokens
            return [
                (
                    _SETTLE_ONE_STATEMENT,
                    [
                        *(reservation.id, tokens, self.total, reservation.month_counter_id),
                        *(tokens, self.total, reservation.day_counter_id),
                    ],
                )
            ]
        if self.count_without_reservation:
            windows = Windows.at(self.record.created_at)
            return [
                (_COUNTER_ADD_USED, [self.config.pk, period, _db_date(windows.start(period)), self.total])
                for period in (Period.MONTH, Period.DAY)
            ]
        return []

    def config_order(self) -> int:
        return self.record.provider_config_id or 0


def _write_in_one_message(writings: list[_Writing], *, observe: bool = True) -> list[UsageRecord]:
    """PostgreSQL: what `attempt_record` writes for each attempt, as one message of statements, in one round trip.

    PostgreSQL runs the statements of one simple-protocol query as one transaction (unless the caller is
    already in one, which they then join), so the rows, the settlements, the health notes and the rollups still
    commit together or not at all. The counter and rollup rows, which every call of a config or a bucket
    updates, stay locked only while PostgreSQL runs and commits the message: no round trip back to this process
    in between (see `_reserve_in_one_statement`). The general path's statements, with the counters moved last;
    rows that several transactions lock (cooldowns, rollups, counters) in config and bucket order.

    Two rare cases take a second trip after the commit: a reservation that had expired and been released (the
    tokens are still added to the current windows, in a transaction of their own), and a budget threshold
    crossed (the alert is inserted then: if the process died in between, that alert would be lost, never
    duplicated; the counter update that crossed it is committed either way).
    """
    if observe:
        for writing in writings:
            attempt_observe(writing.record)  # Prometheus: in memory, whether or not the recording succeeds
    results, positions = _write_message(writings)
    return [_after_message(writing, results, position) for writing, position in zip(writings, positions, strict=True)]


def _write_message(writings: list[_Writing]) -> tuple[list, list[tuple[int, int]]]:
    """Send the message of `_write_in_one_message`; return its results and, for each writing in order, the
    positions of its INSERT and of its counting statements among them."""
    by_config = sorted(range(len(writings)), key=lambda index: writings[index].config_order())
    statements: list[tuple[str, list]] = []
    for index in by_config:
        statements.extend(writings[index].health_statements())
    inserts = []
    for writing in writings:
        inserts.append(len(statements))
        statements.append(_usage_insert(writing.record))
    statements.extend(rollup_statements(records=[writing.record for writing in writings]))
    # The counters last: the next call's reservation waits for these rows, so they stay locked only for the
    # commit (the rollup rows are contended only by other recordings, which run after their responses).
    counting = [0] * len(writings)
    for index in by_config:
        counting[index] = len(statements)
        statements.extend(writings[index].counting_statements())

    # Inside a caller's transaction, a savepoint, so that a failure undoes this call's statements only.
    inner = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    with inner:
        results = results_in_one_message(statements)
    return results, list(zip(inserts, counting, strict=True))


def _after_message(writing: _Writing, results: list, positions: tuple[int, int]) -> UsageRecord:
    insert_position, counting_position = positions
    record = writing.record
    record.pk = results[insert_position][0][0]
    record._state.adding = False
    record._state.db = connection.alias
    counters: list[tuple] = []
    if writing.reservation is not None:
        counters = results[counting_position]
        if not counters and writing.total:
            # Expired and released by a sweep: the tokens were still spent.
            with transaction.atomic(), connection.cursor() as cursor:
                counters = _used_add(
                    cursor, writing.reservation.config_id, writing.total, Windows.at(record.created_at)
                )
    elif writing.count_without_reservation:
        counters = [results[counting_position][0], results[counting_position + 1][0]]
    budget_crossings_record(config=writing.config, counters=counters, tokens=writing.total)
    return record


_usage_insert_sql: tuple[str, list] | None = None


def _usage_insert(record: UsageRecord) -> tuple[str, list]:
    """The INSERT of a usage row, RETURNING its id: what `record.save(force_insert=True)` sends, without the
    ORM's query compilation (about 0.3 ms of CPU)."""
    global _usage_insert_sql
    if _usage_insert_sql is None:
        meta = UsageRecord._meta
        quote = connection.ops.quote_name
        fields = [field for field in meta.concrete_fields if not field.primary_key]
        sql = (
            f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) "  # noqa: S608
            f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(meta.pk.column)}"
        )
        _usage_insert_sql = (sql, fields)
    sql, fields = _usage_insert_sql
    database = connections[connection.alias]  # the thread's wrapper itself: each of `connection`'s attributes
    # is looked up per thread, and the fields ask for several each
    return sql, [field.get_db_prep_save(getattr(record, field.attname), database) for field in fields]


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


def _used_add(cursor, config_id: int, tokens: int, windows: Windows) -> list[tuple]:
    counters = []
    for period in (Period.MONTH, Period.DAY):
        cursor.execute(_COUNTER_ADD_USED, [config_id, period, _db_date(windows.start(period)), tokens])
        counters.append(cursor.fetchone())
    return counters


def provider_failure_note(*, config_id: int, error_type: str, now: datetime | None = None) -> int:
    """Count one failure of a config; at PROVIDER_COOLDOWN_FAILURES in a row it cools down.

    Returns the consecutive failures now counted, or 0 for an error type that does not count
    (see COOLDOWN_ERROR_TYPES). One statement (an INSERT ... ON CONFLICT DO UPDATE).
    """
    if error_type not in COOLDOWN_ERROR_TYPES:
        return 0
    with connection.cursor() as cursor:
        return _failure_note(cursor, config_id, error_type, now or timezone.now())


def _failure_note(cursor, config_id: int, error_type: str, now: datetime) -> int:
    cursor.execute(_COOLDOWN_FAILURE, _failure_params(config_id, error_type, now))
    return cursor.fetchone()[0]


def _failure_params(config_id: int, error_type: str, now: datetime) -> list:
    threshold = settings.PROVIDER_COOLDOWN_FAILURES
    until = _db_datetime(now + timedelta(seconds=settings.PROVIDER_COOLDOWN_SECONDS))
    first_until = until if threshold <= 1 else None
    return [config_id, first_until, error_type, _db_datetime(now), threshold, until]


def provider_success_note(*, config_id: int) -> bool:
    """Reset a config's failure count and end its cooldown; returns whether there was anything to reset.

    One UPDATE that changes no row (and so writes nothing) unless the config had failures.
    """
    with connection.cursor() as cursor:
        cursor.execute(_COOLDOWN_RESET, [config_id])
        return cursor.rowcount > 0


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
