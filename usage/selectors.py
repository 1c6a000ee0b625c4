"""Usage statistics: the one source of the numbers the stats API and the admin dashboard show.

Everything here reads the rollups (usage.rollups), never the usage rows, so a query costs the same with ten
thousand rows or ten million: a 30-day range is at most 30 rows per (config, model, task).

    from usage.selectors import DateRange, usage_stats

    period = DateRange.last(days=30)                       # or DateRange(start=date(...), end=date(...))
    stats = usage_stats(period=period, group_by=["day", "config"])   # one query (+ one for config names)
    stats.totals                                           # UsageGroup for the whole range
    stats.groups                                           # a UsageGroup per (day, config) with any calls
    stats.regroup(["config"])                              # the same groups summed per config: no query
    stats.regroup(["day"])                                 # ... per day
    stats.days()                                           # every date of the range, to fill gaps in charts

Dimensions (`group_by`, in any combination): "provider" (provider type), "config" (provider config),
"task", "model", "user" and "day" (a date in settings.TIME_ZONE). Filters: `provider_type`, `config_id`,
`task`, `user_id`, `model`, each exact. A query that groups or filters by user reads the per-user rollup
(DailyUserRollup); every other query reads DailyRollup, which has no user and so far fewer rows.

A UsageGroup has `key` (the dimension values: "config" -> ConfigRef or None for the environment fallback,
"user" -> UserRef or None for calls without a user, "day" -> date, the others str) and the sums: calls,
successes, errors (every attempt that did not succeed, = calls - successes), errors_by_type (a count for
every entry of usage.models.FAILURE_KINDS: the ErrorType values, "invalid_output", "aborted" and "other"),
input / output / cached_input / cache_write / reasoning tokens, cost_usd (Decimal, exact: the sum of the
priced calls), unpriced_calls, latency_sum_ms and the latency histogram; and, derived, success_rate,
avg_latency_ms and p95_latency_ms (each None without calls). Groups add up: `a + b` sums every count and
histogram, so a percentile of summed groups is that of their calls together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections
from django.db.models import QuerySet, Sum
from django.utils import timezone

from providers.selectors import provider_config_names
from usage.models import (
    COST_UNITS_PER_USD,
    FAILURE_FIELDS,
    LATENCY_BUCKET_BOUNDS_MS,
    LATENCY_BUCKET_FIELDS,
    ROLLUP_MEASURES,
    DailyRollup,
    DailyUserRollup,
)

DIMENSIONS: tuple[str, ...] = ("day", "provider", "config", "task", "model", "user")
MAX_RANGE_DAYS = 366
COST_QUANTUM = Decimal(1).scaleb(-10)  # the usage rows' precision

_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
# The rollup column behind each dimension.
_COLUMNS = {
    "day": "day",
    "provider": "provider_type",
    "config": "config_id",
    "task": "task",
    "model": "model",
    "user": "user_id",
}
# Where each part of a group lies in a row of sums in ROLLUP_MEASURES order.
_POSITION = {name: position for position, name in enumerate(ROLLUP_MEASURES)}
_CALLS, _SUCCESSES, _COST = _POSITION["calls"], _POSITION["successes"], _POSITION["cost_usd_e10"]
_UNPRICED, _LATENCY_SUM = _POSITION["unpriced_calls"], _POSITION["latency_sum_ms"]
_FAILURES = slice(
    _POSITION[next(iter(FAILURE_FIELDS.values()))], _POSITION[next(iter(FAILURE_FIELDS.values()))] + len(FAILURE_FIELDS)
)
_TOKENS = slice(_POSITION[_TOKEN_FIELDS[0]], _POSITION[_TOKEN_FIELDS[0]] + len(_TOKEN_FIELDS))
_HISTOGRAM = slice(
    _POSITION[LATENCY_BUCKET_FIELDS[0]], _POSITION[LATENCY_BUCKET_FIELDS[0]] + len(LATENCY_BUCKET_FIELDS)
)


@dataclass(frozen=True)
class DateRange:
    """Whole days from `start` to `end`, both included, in settings.TIME_ZONE."""

    start: date
    end: date

    def __post_init__(self):
        if self.start > self.end:
            raise ValueError("start must be on or before end")

    @classmethod
    def last(cls, *, days: int, today: date | None = None) -> DateRange:
        """Return the `days` days that end today (in settings.TIME_ZONE)."""
        end = today or timezone.localdate()
        return cls(start=end - timedelta(days=days - 1), end=end)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def dates(self) -> list[date]:
        return [self.start + timedelta(days=offset) for offset in range(self.days)]


@dataclass(frozen=True, order=True)
class ConfigRef:
    """A provider config as a group key; a deleted config keeps its last name (`name` None only if unknown)."""

    id: int
    name: str | None = field(default=None, compare=False)


@dataclass(frozen=True, order=True)
class UserRef:
    """A user as a group key; `username` is None once the user has been deleted."""

    id: int
    username: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class UsageGroup:
    """The sums of one group (see the module docstring)."""

    key: dict[str, Any]
    calls: int = 0
    successes: int = 0
    errors_by_type: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_FIELDS, 0))
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0).quantize(COST_QUANTUM)
    unpriced_calls: int = 0
    latency_sum_ms: int = 0
    latency_histogram: tuple[int, ...] = (0,) * len(LATENCY_BUCKET_FIELDS)

    @classmethod
    def from_sums(cls, key: dict[str, Any], sums: Sequence[Any]) -> UsageGroup:
        """Build a group from the sums of the rollup columns, in ROLLUP_MEASURES order (None counts as 0)."""
        n = [0 if value is None else int(value) for value in sums]
        return cls(
            key=key,
            calls=n[_CALLS],
            successes=n[_SUCCESSES],
            errors_by_type=dict(zip(FAILURE_FIELDS, n[_FAILURES], strict=True)),
            **dict(zip(_TOKEN_FIELDS, n[_TOKENS], strict=True)),
            cost_usd=(Decimal(n[_COST]) / COST_UNITS_PER_USD).quantize(COST_QUANTUM),
            unpriced_calls=n[_UNPRICED],
            latency_sum_ms=n[_LATENCY_SUM],
            latency_histogram=tuple(n[_HISTOGRAM]),
        )

    def __add__(self, other: UsageGroup) -> UsageGroup:
        return UsageGroup(
            key={name: value for name, value in self.key.items() if other.key.get(name) == value},
            calls=self.calls + other.calls,
            successes=self.successes + other.successes,
            errors_by_type={kind: n + other.errors_by_type[kind] for kind, n in self.errors_by_type.items()},
            **{name: getattr(self, name) + getattr(other, name) for name in _TOKEN_FIELDS},
            cost_usd=self.cost_usd + other.cost_usd,
            unpriced_calls=self.unpriced_calls + other.unpriced_calls,
            latency_sum_ms=self.latency_sum_ms + other.latency_sum_ms,
            latency_histogram=tuple(
                a + b for a, b in zip(self.latency_histogram, other.latency_histogram, strict=True)
            ),
        )

    @property
    def errors(self) -> int:
        return self.calls - self.successes

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def success_rate(self) -> float | None:
        """Successes over calls, rounded to 4 places; None without calls."""
        return round(self.successes / self.calls, 4) if self.calls else None

    @property
    def avg_latency_ms(self) -> float | None:
        """Mean latency of every attempt (failures included), rounded to 0.1 ms; None without calls."""
        return round(self.latency_sum_ms / self.calls, 1) if self.calls else None

    @property
    def p95_latency_ms(self) -> int | None:
        return latency_percentile(self.latency_histogram, 0.95)


def latency_percentile(histogram: Sequence[int], quantile: float) -> int | None:
    """Estimate a latency percentile (ms) from histogram counts (LATENCY_BUCKET_FIELDS order); None if empty.

    As Prometheus' histogram_quantile: find the bucket holding the rank `quantile * count` and interpolate
    linearly within it (the first bucket starts at 0). The rank falling in the open top bucket gives its
    lower bound, the largest latency the histogram can vouch for.
    """
    count = sum(histogram)
    if not count:
        return None
    rank = quantile * count
    below = 0
    lower = 0
    for bucket, in_bucket in enumerate(histogram):
        if bucket == len(LATENCY_BUCKET_BOUNDS_MS):
            return LATENCY_BUCKET_BOUNDS_MS[-1]
        upper = LATENCY_BUCKET_BOUNDS_MS[bucket]
        if in_bucket and below + in_bucket >= rank:
            return round(lower + (upper - lower) * (rank - below) / in_bucket)
        below += in_bucket
        lower = upper
    return LATENCY_BUCKET_BOUNDS_MS[-1]  # unreachable: the loop returns by the top bucket


@dataclass(frozen=True)
class UsageStats:
    """Usage for a range: a group per combination of the `group_by` dimensions that has calls, and totals."""

    period: DateRange
    group_by: tuple[str, ...]
    groups: list[UsageGroup]
    totals: UsageGroup

    def regroup(self, group_by: Sequence[str]) -> list[UsageGroup]:
        """Sum the groups by a subset of `group_by`, ordered as `usage_stats` orders groups. No query."""
        missing = set(group_by) - set(self.group_by)
        if missing:
            raise ValueError(f"cannot regroup by {sorted(missing)}: not among {list(self.group_by)}")
        merged: dict[tuple, UsageGroup] = {}
        for group in self.groups:
            key = tuple(group.key[name] for name in group_by)
            known = merged.get(key)
            merged[key] = group if known is None else known + group
        return [
            UsageGroup(**{**vars(group), "key": {name: group.key[name] for name in group_by}})
            for group in sorted(merged.values(), key=lambda g: _sort_key(g.key, group_by))
        ]

    def days(self) -> list[date]:
        return self.period.dates()


def usage_stats(
    *,
    period: DateRange,
    group_by: Iterable[str] = (),
    provider_type: str | None = None,
    config_id: int | None = None,
    task: str | None = None,
    user_id: int | None = None,
    model: str | None = None,
) -> UsageStats:
    """Sum the usage of `period` by the `group_by` dimensions, filtered; see the module docstring.

    One query on the rollups, plus one for config names when grouping by config and one for usernames when
    grouping by user. Groups come ordered by the dimensions in the order given (configs and users by id, the
    environment fallback and calls without a user first).
    """
    group_by = tuple(dict.fromkeys(group_by))  # unique, in the order given
    unknown = set(group_by) - set(DIMENSIONS)
    if unknown:
        raise ValueError(f"unknown dimensions {sorted(unknown)}; choose from {list(DIMENSIONS)}")

    rollup = DailyUserRollup if user_id is not None or "user" in group_by else DailyRollup
    rows = rollup.objects.filter(day__gte=period.start, day__lte=period.end)
    filters = {"provider_type": provider_type, "config_id": config_id, "task": task, "user_id": user_id, "model": model}
    rows = rows.filter(**{column: value for column, value in filters.items() if value is not None})

    sums = {name: Sum(name) for name in ROLLUP_MEASURES}
    if not group_by:
        totals = rows.aggregate(**sums)
        return UsageStats(
            period=period,
            group_by=(),
            groups=[],
            totals=UsageGroup.from_sums({}, [totals[name] for name in ROLLUP_MEASURES]),
        )

    columns = [_column(name) for name in group_by]
    results = _fetch(rows.values(*columns).annotate(**sums).order_by(), [*columns, *ROLLUP_MEASURES])
    # Sorted on the raw values: 0 (no config, no user) first, then ids, dates and names in their own order.
    results.sort(key=lambda row: row[: len(columns)])
    configs = _config_names(row[group_by.index("config")] for row in results) if "config" in group_by else {}
    users = _usernames(row[group_by.index("user")] for row in results) if "user" in group_by else {}
    groups = [
        UsageGroup.from_sums(
            {name: _key_value(name, value, configs, users) for name, value in zip(group_by, row, strict=False)},
            row[len(columns) :],
        )
        for row in results
    ]
    totals = sum(groups[1:], groups[0]) if groups else UsageGroup(key={})
    return UsageStats(period=period, group_by=group_by, groups=groups, totals=UsageGroup(**{**vars(totals), "key": {}}))


def _fetch(query: QuerySet, columns: list[str]) -> list[tuple]:
    """Run a values() query and return its rows as tuples in `columns` order, without Django's converters.

    The converters (an int() per summed column, in Python) cost more than the query itself for a few hundred
    groups. The only value that needs one is a day on SQLite, which comes back as text.
    """
    sql, params = query.query.sql_with_params()
    with connections[query.db].cursor() as cursor:
        cursor.execute(sql, params)
        names = [description[0] for description in cursor.description]
        raw = cursor.fetchall()
    order = [names.index(column) for column in columns]
    rows = [tuple(row[i] for i in order) for row in raw]
    if "day" in columns and rows and isinstance(rows[0][columns.index("day")], str):
        position = columns.index("day")
        rows = [(*row[:position], date.fromisoformat(row[position]), *row[position + 1 :]) for row in rows]
    return rows


def _column(dimension: str) -> str:
    return _COLUMNS[dimension]


def _key_value(dimension: str, value: Any, configs: dict[int, str], users: dict[int, str]) -> Any:
    if dimension == "config":
        return ConfigRef(id=value, name=configs.get(value)) if value else None
    if dimension == "user":
        return UserRef(id=value, username=users.get(value)) if value else None
    return value


def _sort_key(key: dict[str, Any], group_by: Sequence[str]) -> tuple:
    # As usage_stats sorts its rows: None (no config, no user) first, configs and users by id.
    return tuple(_sort_value(key[name]) for name in group_by)


def _sort_value(value: Any) -> Any:
    if value is None:
        return 0
    if isinstance(value, ConfigRef | UserRef):
        return value.id
    return value


def _config_names(ids: Iterable[int]) -> dict[int, str]:
    # Deleted configs keep their names (from the audit log): their history stays readable.
    return provider_config_names(ids=ids)


def _usernames(ids: Iterable[int]) -> dict[int, str]:
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    user_model = get_user_model()
    return dict(user_model.objects.filter(pk__in=wanted).values_list("pk", user_model.USERNAME_FIELD))
