"""The rollups hold exactly what the usage rows add up to, however the calls were recorded."""

import asyncio
import itertools
import random
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from providers.clients.base import ErrorType, TokenUsage
from usage import rollups, services
from usage.models import (
    FAILURE_FIELDS,
    LATENCY_BUCKET_BOUNDS_MS,
    LATENCY_BUCKET_FIELDS,
    ROLLUP_MEASURES,
    DailyRollup,
    DailyUserRollup,
    TokenCounter,
    UsageRecord,
)
from usage.rollups import rollups_add_records
from usage.selectors import latency_percentile
from usage.services import Attempt, attempt_build, attempt_record, attempts_save_async, tokens_reserve

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)
OUTCOMES = [("success", "")] * 6 + [
    ("error", "rate_limited"),
    ("error", "timeout"),
    ("error", "authentication"),
    ("error", "bad_request"),
    ("invalid_output", ""),
    ("aborted", ""),
]
LATENCIES = [0, 1, 49, 50, 51, 100, 640, 2_999, 3_000, 59_999, 60_000, 300_000, 300_001, 1_000_000, 750]


@pytest.fixture(autouse=True)
def _no_opportunistic_sweep(monkeypatch):
    monkeypatch.setattr(services, "_next_sweep", float("inf"))


def random_call(rng: random.Random, *, configs, users, when: datetime, reservation=None, config=None):
    """Record one attempt with a random shape: config or the environment fallback, outcome, tokens, latency."""
    return attempt_record(
        reservation=reservation, **random_attempt(rng, configs=configs, users=users, when=when, config=config)
    )


def random_attempt(rng: random.Random, *, configs, users, when: datetime, config=None) -> dict:
    """The arguments of `attempt_build` for one attempt with a random shape (see `random_call`)."""
    config = config or rng.choice([*configs, None])
    outcome, error_type = rng.choice(OUTCOMES)
    usage = None
    if outcome != "aborted" and error_type == "":
        input_tokens = rng.randint(0, 5000)
        output_tokens = rng.randint(0, 2000)
        usage = TokenUsage(
            input_tokens,
            output_tokens,
            cached_input_tokens=rng.randint(0, input_tokens // 2),
            reasoning_tokens=rng.randint(0, output_tokens // 2),
        )
    user = rng.choice([*users, None])
    return dict(
        request_id=f"req-{rng.randrange(10**9)}",
        user_id=user.pk if user else None,
        task=rng.choice(["extraction", "image_validation", "cv_drafting", "cover_letter"]),
        config=config,
        provider_type=config.provider_type if config else "gemini",
        model=(config.model_name if config else "gemini-2.5-flash") if rng.random() < 0.8 else "gpt-4o-2024-08-06",
        attempt=rng.randint(1, 3),
        outcome=outcome,
        error_type=error_type,
        usage=usage,
        latency_ms=rng.choice(LATENCIES) if rng.random() < 0.5 else rng.randint(0, 90_000),
        streamed=False,
        now=when,
    )


@pytest.fixture
def mixed_configs(provider_config):
    return [
        provider_config(provider_type="openai", model_name="gpt-4o"),
        provider_config(
            provider_type="claude",
            model_name="claude-sonnet-4-5",
            input_price_per_million=Decimal("3"),
            output_price_per_million=Decimal("15"),
        ),
        provider_config(provider_type="gemini", model_name="gemini-exp-synthetic"),  # unpriced
    ]


@pytest.fixture
def users(django_user_model):
    return [django_user_model.objects.create_user(f"user{n}", password="Quiet-Lantern-Orbit-73") for n in range(3)]


# The reference: the usage rows aggregated by the database itself, bucketed by Django's own truncation.


def raw_sums(*, by_user: bool) -> dict[tuple, dict]:
    bucket = TruncDate("created_at", tzinfo=timezone.get_default_timezone())
    known_types = [e.value for e in ErrorType]
    failures = {
        **{f"errors_{kind}": Q(outcome="error", error_type=kind) for kind in known_types},
        "errors_invalid_output": Q(outcome="invalid_output"),
        "errors_aborted": Q(outcome="aborted"),
        "errors_unsettled": Q(outcome="unsettled"),
        "errors_other": Q(outcome="error") & ~Q(error_type__in=known_types),
    }
    bounds = [None, *LATENCY_BUCKET_BOUNDS_MS, None]
    buckets = {}
    for field, low, high in zip(LATENCY_BUCKET_FIELDS, bounds, bounds[1:], strict=False):
        condition = Q()
        if low is not None:
            condition &= Q(latency_ms__gt=low)
        if high is not None:
            condition &= Q(latency_ms__lte=high)
        buckets[field] = Count("id", filter=condition)
    dimensions = ["bucket", "provider_config_id", "provider_type", "model", "task", *(["user_id"] if by_user else [])]
    rows = (
        UsageRecord.objects.annotate(bucket=bucket)
        .values(*dimensions)
        .annotate(
            calls=Count("id"),
            successes=Count("id", filter=Q(outcome="success")),
            **{field: Count("id", filter=condition) for field, condition in failures.items()},
            **{f: Sum(f) for f in ["input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens"]},
            reasoning_tokens=Sum("reasoning_tokens"),
            cost=Sum("cost_usd"),
            unpriced_calls=Count("id", filter=Q(priced=False)),
            latency_sum_ms=Sum("latency_ms"),
            **buckets,
        )
        .order_by()
    )
    sums = {}
    for row in rows:
        key = (
            row["bucket"],
            row.get("user_id") or 0,
            row["provider_config_id"] or 0,
            row["provider_type"],
            row["model"],
            row["task"],
        )
        cost = (row.pop("cost") or Decimal(0)).quantize(Decimal("1e-10"))
        sums[key] = {name: int(row[name]) for name in ROLLUP_MEASURES if name != "cost_usd_e10"} | {"cost": cost}
    return sums


def rollup_sums(*, by_user: bool) -> dict[tuple, dict]:
    sums = {}
    for row in (DailyUserRollup if by_user else DailyRollup).objects.values():
        key = (
            row["day"],
            row["user_id"] if by_user else 0,
            row["config_id"],
            row["provider_type"],
            row["model"],
            row["task"],
        )
        cost = (Decimal(row["cost_usd_e10"]) / 10**10).quantize(Decimal("1e-10"))
        sums[key] = {name: row[name] for name in ROLLUP_MEASURES if name != "cost_usd_e10"} | {"cost": cost}
    return sums


def assert_rollups_match_the_rows():
    for by_user in (False, True):
        expected, actual = raw_sums(by_user=by_user), rollup_sums(by_user=by_user)
        assert actual.keys() == expected.keys()
        for key, sums in expected.items():
            assert actual[key] == sums, key


def test_rollups_equal_the_raw_aggregates_after_many_varied_calls(mixed_configs, users, settings):
    # Three days of Berlin, the middle one 25 hours long (the clocks go back on 25 October 2026).
    settings.TIME_ZONE = "Europe/Berlin"
    rng = random.Random(20261126)
    for minute in range(0, 60 * 72, 11):
        random_call(rng, configs=mixed_configs, users=users, when=START + timedelta(minutes=minute))

    assert DailyRollup.objects.count() > 20 and DailyUserRollup.objects.count() > 40
    assert_rollups_match_the_rows()
    # 22:00 UTC on the 24th is midnight in Berlin: the first calls count on the 25th, none on the 24th.
    assert set(DailyRollup.objects.values_list("day", flat=True)) == {date(2026, 10, d) for d in (25, 26, 27)}


@pytest.mark.django_db(transaction=True)  # saved from the event loop, over connections of its own
def test_rollups_equal_the_raw_aggregates_when_calls_are_saved_together(mixed_configs, users):
    # As the request path saves the calls of concurrent requests (usage.services.attempt_save_async): several per
    # transaction, the calls that share a rollup row summed into one upsert.
    rng = random.Random(11)
    calls = [
        random_attempt(rng, configs=mixed_configs, users=users, when=START + timedelta(minutes=minute))
        for minute in range(0, 60 * 30, 7)
    ]
    position = 0
    for size in itertools.cycle([1, 2, 5, 17, 40]):
        batch = calls[position : position + size]
        if not batch:
            break
        attempts = [Attempt(attempt_build(**call), None, call["config"]) for call in batch]
        saved = asyncio.run(attempts_save_async(attempts))
        assert all(isinstance(row, UsageRecord) and row.pk for row in saved), saved
        position += size

    assert UsageRecord.objects.count() == len(calls)
    assert_rollups_match_the_rows()


def test_every_failure_kind_and_latency_bucket_is_counted_where_it_belongs(provider_config):
    config = provider_config(provider_type="openai", model_name="gpt-4o")
    kinds = [("error", e.value) for e in ErrorType] + [
        ("invalid_output", ""),
        ("aborted", ""),
        ("unsettled", ""),
        ("success", ""),
    ]
    kinds.append(("error", ""))  # an error nobody classified
    for (outcome, error_type), latency in zip(kinds, LATENCIES, strict=False):
        attempt_record(
            reservation=None,
            request_id="req-kinds",
            user_id=None,
            task="extraction",
            config=config,
            provider_type="openai",
            model="gpt-4o",
            attempt=1,
            outcome=outcome,
            error_type=error_type,
            usage=None,
            latency_ms=latency,
            streamed=False,
            now=START,
        )

    row = DailyRollup.objects.get()
    assert row.calls == len(kinds) and row.successes == 1
    assert {kind: getattr(row, field) for kind, field in FAILURE_FIELDS.items()} == {
        **{e.value: 1 for e in ErrorType},
        "invalid_output": 1,
        "aborted": 1,
        "unsettled": 1,
        "other": 1,
    }
    # 0, 1, 49 and 50 ms are at most 50; 51 and 100 in (50, 100]; 640 in (500, 750]; ...; 300,001 and 1,000,000 over
    histogram = {field: getattr(row, field) for field in LATENCY_BUCKET_FIELDS if getattr(row, field)}
    assert histogram == {
        "latency_le_50": 4,
        "latency_le_100": 2,
        "latency_le_750": 2,  # 640 and 750
        "latency_le_3000": 2,
        "latency_le_60000": 2,
        "latency_le_300000": 1,
        "latency_over_300000": 2,  # 300,001 and 1,000,000
    }
    assert len(kinds) == len(LATENCIES)
    assert row.latency_sum_ms == sum(LATENCIES)


def test_a_call_and_its_rollups_commit_together_or_not_at_all(provider_config, monkeypatch):
    config = provider_config(provider_type="openai", model_name="gpt-4o", daily_token_limit=10_000)
    reservation = tokens_reserve(config=config, tokens=500, now=START)

    def failing_statements(*, records):
        return [("INSERT INTO no_such_rollup_table VALUES (1)", [])]

    monkeypatch.setattr(services, "rollup_statements", failing_statements)
    with pytest.raises((RuntimeError, DatabaseError)):
        random_call(random.Random(1), configs=[config], users=[], when=START, reservation=reservation, config=config)

    assert not UsageRecord.objects.exists()
    day = TokenCounter.objects.get(period="day")
    assert (day.used, day.reserved) == (0, 500)  # the settlement was rolled back with the row


def test_with_rollups_off_nothing_is_added_and_rollups_add_records_catches_up(mixed_configs, users, settings):
    rng = random.Random(7)
    random_call(rng, configs=mixed_configs, users=users, when=START)
    settings.USAGE_ROLLUPS_ENABLED = False
    first_unrolled = None
    for minute in range(0, 600, 13):
        row = random_call(rng, configs=mixed_configs, users=users, when=START + timedelta(minutes=minute))
        first_unrolled = first_unrolled or row.pk
    assert DailyRollup.objects.aggregate(calls=Sum("calls"))["calls"] == 1

    rollups_add_records(min_id=first_unrolled)

    assert_rollups_match_the_rows()


def test_the_bulk_path_counts_exactly_as_the_hook(mixed_configs, users, settings):
    settings.TIME_ZONE = "Europe/Berlin"  # through the night when the clocks go back, as above
    rng = random.Random(11)
    for minute in range(0, 60 * 48, 17):
        random_call(rng, configs=mixed_configs, users=users, when=START + timedelta(minutes=minute))
    by_hook = (rollup_sums(by_user=False), rollup_sums(by_user=True))
    DailyRollup.objects.all().delete()
    DailyUserRollup.objects.all().delete()

    rollups_add_records()

    assert (rollup_sums(by_user=False), rollup_sums(by_user=True)) == by_hook


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL: SQLite lets one writer at a time in, so concurrent recorders never race there",
)
def test_rollups_equal_the_raw_aggregates_after_a_burst_of_concurrent_calls(mixed_configs, users, provider_config):
    limited = provider_config(provider_type="openai", model_name="gpt-4o", daily_token_limit=10**9)
    configs = [*mixed_configs, limited]
    threads, calls_each = 8, 25
    barrier = threading.Barrier(threads)
    failures = []

    def worker(seed: int):
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(calls_each):
                # Few buckets, so every thread keeps hitting the same rollup rows.
                config = rng.choice(configs)
                reservation = tokens_reserve(config=config, tokens=8000, now=START)
                random_call(rng, configs=configs, users=users, when=START, reservation=reservation, config=config)
        except Exception as error:  # reported below, with the thread's seed
            failures.append((seed, repr(error)))
        finally:
            connection.close()

    pool = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert failures == []
    assert UsageRecord.objects.count() == threads * calls_each
    assert DailyRollup.objects.aggregate(calls=Sum("calls"))["calls"] == threads * calls_each
    assert_rollups_match_the_rows()


# The percentile estimate ---------------------------------------------------------------------------------------


def histogram(**counts) -> list[int]:
    return [counts.get(field, 0) for field in LATENCY_BUCKET_FIELDS]


def test_a_percentile_is_interpolated_within_its_bucket():
    assert latency_percentile(histogram(), 0.95) is None
    assert latency_percentile(histogram(latency_le_50=1), 0.95) == 48  # 0.95 of the way from 0 to 50
    # 20 calls: rank 19 is the 9th of 10 in (1,000, 1,500]
    assert latency_percentile(histogram(latency_le_100=10, latency_le_1500=10), 0.95) == 1450
    assert latency_percentile(histogram(latency_le_100=10, latency_le_1500=10), 0.5) == 100
    # Above the last bound all the histogram knows is "more than 300 s".
    assert latency_percentile(histogram(latency_le_50=1, latency_over_300000=99), 0.95) == 300_000


def test_a_latency_on_a_bound_belongs_to_the_bucket_below():
    assert rollups.latency_bucket(50) == 0
    assert rollups.latency_bucket(51) == 1
    assert rollups.latency_bucket(300_000) == len(LATENCY_BUCKET_BOUNDS_MS) - 1
    assert rollups.latency_bucket(300_001) == len(LATENCY_BUCKET_BOUNDS_MS)
