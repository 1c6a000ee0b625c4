"""Rollups: usage summed per day (DailyRollup) and per day and user (DailyUserRollup), kept as calls are recorded.

`rollup_statements` go in the transaction that records usage rows (`usage.services`), so a usage row and its
share of the rollups commit together or not at all. They are two upserts (`INSERT ... ON CONFLICT DO UPDATE SET calls =
calls + excluded.calls, ...`), one per rollup: adding in the database is what keeps the sums right when
several processes record calls for the same bucket at once (the row lock makes them take turns), where a read
and a write back from Python would lose updates. The statements are the same on PostgreSQL and SQLite (3.24
or later). Concurrent recorders of one bucket serialise on its row until they commit; the upserts are the last
statements of the transaction, so that lock is held only for the commit.

`rollups_add_records` adds rows that were inserted without them (bulk loads by `generate_usage`, or rows
recorded while USAGE_ROLLUPS_ENABLED was off) with one `INSERT ... SELECT ... GROUP BY` per rollup on
PostgreSQL, and in Python on SQLite. Both count exactly as `rollup_statements` do; the tests hold both to the raw
rows.

Days are dates in settings.TIME_ZONE. Changing TIME_ZONE later leaves the earlier calls in the old zone's days;
a rebuild from the usage rows still kept fixes that (empty both rollups, then call `rollups_add_records()`),
and older history keeps the old zone's days.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from providers.clients.base import ErrorType
from usage.models import (
    COST_UNITS_PER_USD,
    FAILURE_FIELDS,
    LATENCY_BUCKET_BOUNDS_MS,
    LATENCY_BUCKET_FIELDS,
    ROLLUP_MEASURES,
    DailyRollup,
    DailyUserRollup,
    Outcome,
    UsageRecord,
)

DAILY_TABLE = DailyRollup._meta.db_table
DAILY_USER_TABLE = DailyUserRollup._meta.db_table
DAILY_DIMENSIONS = ("day", "config_id", "provider_type", "model", "task")
DAILY_USER_DIMENSIONS = ("day", "user_id", "config_id", "provider_type", "model", "task")

_ERROR_TYPES = frozenset(e.value for e in ErrorType)
_POSITION = {name: position for position, name in enumerate(ROLLUP_MEASURES)}
_CALLS = _POSITION["calls"]
_SUCCESSES = _POSITION["successes"]
_FAILURE_POSITION = {kind: _POSITION[field] for kind, field in FAILURE_FIELDS.items()}
_TOKENS = tuple(
    _POSITION[name]
    for name in ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
)
_COST = _POSITION["cost_usd_e10"]
_UNPRICED = _POSITION["unpriced_calls"]
_LATENCY_SUM = _POSITION["latency_sum_ms"]
_FIRST_LATENCY_BUCKET = _POSITION[LATENCY_BUCKET_FIELDS[0]]


def _upsert_sql(table: str, dimensions: tuple[str, ...]) -> str:
    """The upsert of one rollup row: dimensions and measures in, measures added to an existing row."""
    columns = (*dimensions, *ROLLUP_MEASURES)
    additions = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in ROLLUP_MEASURES)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "  # noqa: S608
        f"ON CONFLICT ({', '.join(dimensions)}) DO UPDATE SET {additions}"
    )


# Table and column names come from the models; every value is a parameter.
_DAILY_UPSERT = _upsert_sql(DAILY_TABLE, DAILY_DIMENSIONS)
_DAILY_USER_UPSERT = _upsert_sql(DAILY_USER_TABLE, DAILY_USER_DIMENSIONS)


def rollups_enabled() -> bool:
    """Tell whether calls are added to the rollups as they are recorded (USAGE_ROLLUPS_ENABLED)."""
    return getattr(settings, "USAGE_ROLLUPS_ENABLED", True)


def failure_kind(outcome: str, error_type: str) -> str | None:
    """Return the FAILURE_KINDS entry an attempt counts under, or None for a success."""
    if outcome == Outcome.SUCCESS:
        return None
    if outcome == Outcome.ERROR:
        return error_type if error_type in _ERROR_TYPES else "other"
    if outcome in (Outcome.INVALID_OUTPUT, Outcome.ABORTED, Outcome.UNSETTLED):
        return str(outcome)
    return "other"


def latency_bucket(latency_ms: int) -> int:
    """Return the index into LATENCY_BUCKET_FIELDS of the bucket that holds `latency_ms`."""
    return bisect_left(LATENCY_BUCKET_BOUNDS_MS, latency_ms)


def day_bucket(moment: datetime) -> date:
    """Return the date in settings.TIME_ZONE of `moment`."""
    return timezone.localtime(moment, timezone.get_default_timezone()).date()


def cost_units(cost_usd: Decimal) -> int:
    """Return a cost in the rollups' integer units (1e-10 USD)."""
    return int((cost_usd * COST_UNITS_PER_USD).to_integral_value())


def measures(
    *,
    outcome: str,
    error_type: str,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    cache_write_tokens: int,
    reasoning_tokens: int,
    cost_usd: Decimal | None,
    latency_ms: int,
) -> list[int]:
    """Return one attempt's contribution to a rollup row, in ROLLUP_MEASURES order."""
    values = [0] * len(ROLLUP_MEASURES)
    values[_CALLS] = 1
    kind = failure_kind(outcome, error_type)
    values[_SUCCESSES if kind is None else _FAILURE_POSITION[kind]] = 1
    for position, tokens in zip(
        _TOKENS, (input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens), strict=True
    ):
        values[position] = tokens
    if cost_usd is None:
        values[_UNPRICED] = 1
    else:
        values[_COST] = cost_units(cost_usd)
    values[_LATENCY_SUM] = latency_ms
    values[_FIRST_LATENCY_BUCKET + latency_bucket(latency_ms)] = 1
    return values


def _record_measures(record: UsageRecord) -> list[int]:
    return measures(
        outcome=record.outcome,
        error_type=record.error_type,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cached_input_tokens=record.cached_input_tokens,
        cache_write_tokens=record.cache_write_tokens,
        reasoning_tokens=record.reasoning_tokens,
        cost_usd=record.cost_usd,
        latency_ms=record.latency_ms,
    )


def rollup_statements(*, records: Iterable[UsageRecord]) -> list[tuple[str, list]]:
    """The upserts that add `records` to both rollups, for the transaction that inserts them
    (`usage.services`): one per rollup row they touch, their measures summed, in the same order in every
    transaction (table, then key) so that concurrent recorders lock rows in the same order. Empty when
    USAGE_ROLLUPS_ENABLED is off."""
    if not rollups_enabled():
        return []
    daily: dict[tuple, list[int]] = {}
    daily_user: dict[tuple, list[int]] = {}
    for record in records:
        values = _record_measures(record)
        day = day_bucket(record.created_at)
        config_id = record.provider_config_id or 0
        kind = (record.provider_type, record.model, record.task)
        for sums, key in ((daily, (day, config_id, *kind)), (daily_user, (day, record.user_id or 0, config_id, *kind))):
            summed = sums.get(key)
            sums[key] = values if summed is None else [a + b for a, b in zip(summed, values, strict=True)]
    return [
        (sql, [*key, *sums[key]])
        for sums, sql in ((daily, _DAILY_UPSERT), (daily_user, _DAILY_USER_UPSERT))
        for key in sorted(sums, key=_sort_key)
    ]


def _sort_key(key: tuple) -> tuple:
    return tuple(str(part) for part in key)


def rollups_add_records(*, min_id: int | None = None, max_id: int | None = None) -> None:
    """Add the usage rows with ids in [min_id, max_id] (either end open when None) to both rollups.

    For rows inserted without `rollup_statements`; adding a row twice counts it twice. One transaction. On
    PostgreSQL, one `INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE` per rollup; elsewhere the rows
    are read and summed in Python (fine for the sizes SQLite is used with).
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _add_records_in_sql(min_id, max_id)
        else:
            _add_records_in_python(min_id, max_id)


def _id_range(min_id: int | None, max_id: int | None) -> tuple[str, list[int]]:
    conditions, params = ["TRUE"], []
    if min_id is not None:
        conditions.append("id >= %s")
        params.append(min_id)
    if max_id is not None:
        conditions.append("id <= %s")
        params.append(max_id)
    return " AND ".join(conditions), params


def _measure_expressions() -> list[str]:
    """The SQL aggregates over usage rows for ROLLUP_MEASURES, in order: `measures` written as SQL."""
    known = ", ".join(f"'{e}'" for e in sorted(_ERROR_TYPES))
    conditions = {
        **{kind: f"outcome = 'error' AND error_type = '{kind}'" for kind in sorted(_ERROR_TYPES)},
        "invalid_output": f"outcome = '{Outcome.INVALID_OUTPUT.value}'",
        "aborted": f"outcome = '{Outcome.ABORTED.value}'",
        "unsettled": f"outcome = '{Outcome.UNSETTLED.value}'",
        "other": (
            f"outcome NOT IN ('{Outcome.SUCCESS.value}', '{Outcome.INVALID_OUTPUT.value}', "
            f"'{Outcome.ABORTED.value}', '{Outcome.UNSETTLED.value}') "
            f"AND NOT (outcome = 'error' AND error_type IN ({known}))"
        ),
    }
    lower = [None, *LATENCY_BUCKET_BOUNDS_MS]
    upper = [*LATENCY_BUCKET_BOUNDS_MS, None]
    buckets = {}
    for field, low, high in zip(LATENCY_BUCKET_FIELDS, lower, upper, strict=True):
        parts = ([f"latency_ms > {low}"] if low is not None else []) + (
            [f"latency_ms <= {high}"] if high is not None else []
        )
        buckets[field] = " AND ".join(parts)
    failure_by_field = {field: conditions[kind] for kind, field in FAILURE_FIELDS.items()}
    expressions = {
        "calls": "count(*)",
        "successes": f"count(*) FILTER (WHERE outcome = '{Outcome.SUCCESS.value}')",
        **{field: f"count(*) FILTER (WHERE {condition})" for field, condition in failure_by_field.items()},
        **{name: f"sum({name})" for name in ("input_tokens", "output_tokens", "cached_input_tokens")},
        **{name: f"sum({name})" for name in ("cache_write_tokens", "reasoning_tokens")},
        "cost_usd_e10": f"coalesce(sum(round(cost_usd * {COST_UNITS_PER_USD})), 0)",
        "unpriced_calls": "count(*) FILTER (WHERE cost_usd IS NULL)",
        "latency_sum_ms": "sum(latency_ms)",
        **{field: f"count(*) FILTER (WHERE {condition})" for field, condition in buckets.items()},
    }
    return [expressions[name] for name in ROLLUP_MEASURES]


def _add_records_in_sql(min_id: int | None, max_id: int | None) -> None:
    where, id_params = _id_range(min_id, max_id)
    aggregates = ", ".join(_measure_expressions())
    additions = {
        table: ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in ROLLUP_MEASURES)
        for table in (DAILY_TABLE, DAILY_USER_TABLE)
    }
    measure_columns = ", ".join(ROLLUP_MEASURES)
    tz = timezone.get_default_timezone_name()
    source = UsageRecord._meta.db_table
    daily = (
        f"INSERT INTO {DAILY_TABLE} ({', '.join(DAILY_DIMENSIONS)}, {measure_columns}) "  # noqa: S608
        f"SELECT (created_at AT TIME ZONE %s)::date, coalesce(provider_config_id, 0), provider_type, model, task, "
        f"{aggregates} FROM {source} WHERE {where} GROUP BY 1, 2, 3, 4, 5 "
        f"ON CONFLICT ({', '.join(DAILY_DIMENSIONS)}) DO UPDATE SET {additions[DAILY_TABLE]}"
    )
    daily_user = (
        f"INSERT INTO {DAILY_USER_TABLE} ({', '.join(DAILY_USER_DIMENSIONS)}, {measure_columns}) "  # noqa: S608
        f"SELECT (created_at AT TIME ZONE %s)::date, coalesce(user_id, 0), coalesce(provider_config_id, 0), "
        f"provider_type, model, task, {aggregates} FROM {source} WHERE {where} GROUP BY 1, 2, 3, 4, 5, 6 "
        f"ON CONFLICT ({', '.join(DAILY_USER_DIMENSIONS)}) DO UPDATE SET {additions[DAILY_USER_TABLE]}"
    )
    with connection.cursor() as cursor:
        # A hash aggregate over millions of rows wants more than the default 4 MB to stay in memory.
        cursor.execute("SET LOCAL work_mem = '256MB'")
        cursor.execute(daily, [tz, *id_params])
        cursor.execute(daily_user, [tz, *id_params])


def _add_records_in_python(min_id: int | None, max_id: int | None) -> None:
    rows = UsageRecord.objects.order_by()
    if min_id is not None:
        rows = rows.filter(id__gte=min_id)
    if max_id is not None:
        rows = rows.filter(id__lte=max_id)
    daily: dict[tuple, list[int]] = {}
    daily_user: dict[tuple, list[int]] = {}
    for record in rows.iterator(chunk_size=5000):
        values = _record_measures(record)
        day = day_bucket(record.created_at)
        config_id = record.provider_config_id or 0
        kind = (record.provider_type, record.model, record.task)
        for sums, key in ((daily, (day, config_id, *kind)), (daily_user, (day, record.user_id or 0, config_id, *kind))):
            total = sums.get(key)
            if total is None:
                sums[key] = values
            else:
                sums[key] = [a + b for a, b in zip(total, values, strict=True)]
    adapt = connection.ops.adapt_datefield_value
    _upsert_many(_DAILY_UPSERT, ((adapt(key[0]), *key[1:], *sums) for key, sums in daily.items()))
    _upsert_many(_DAILY_USER_UPSERT, ((adapt(key[0]), *key[1:], *sums) for key, sums in daily_user.items()))


def _upsert_many(sql: str, rows: Iterable[tuple]) -> None:
    rows = list(rows)
    if rows:
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
