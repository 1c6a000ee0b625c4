import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.clients.base import TokenUsage
from tests.queries import sent_queries
from usage import services
from usage.models import ProviderCooldown, TokenCounter, UsageRecord
from usage.services import Attempt, attempt_build, attempt_record, attempts_save_async, tokens_reserve

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_opportunistic_sweep(monkeypatch):
    monkeypatch.setattr(services, "_next_sweep", float("inf"))


def captured(context: CaptureQueriesContext) -> list[str]:
    """The statements a block sent, without the test transaction's savepoints. On PostgreSQL attempt_record
    sends its statements as one message (`usage.services._record_in_one_message`): split, one each, and each
    prepared statement read as its SQL (without the PREPARE sent on a connection's first use)."""
    return [
        statement
        for query in sent_queries(context)
        if "SAVEPOINT" not in query.upper()
        for statement in query.split(";\n")
    ]


def first_words(sql: list[str]) -> list[str]:
    return [statement.split()[0] for statement in sql]


# An attempt's arguments (`attempt_build`'s; `attempt_record` takes a reservation too).
ATTEMPT = {
    "request_id": "req-7f3a",
    "user_id": None,
    "task": "cv_drafting",
    "config": None,
    "provider_type": "openai",
    "model": "gpt-4o",
    "attempt": 1,
    "outcome": "success",
    "error_type": "",
    "usage": None,
    "latency_ms": 850,
    "streamed": False,
    "now": NOON,
}


def record(**overrides) -> UsageRecord:
    return attempt_record(**{"reservation": None, **ATTEMPT, **overrides})


def test_a_usage_row_is_exact_to_the_token_and_the_cost(provider_config, ordinary_user):
    config = provider_config(provider_type="openai", model_name="gpt-4o", daily_token_limit=100_000)
    reservation = tokens_reserve(config=config, tokens=30_000, now=NOON)
    usage = TokenUsage(input_tokens=12_345, output_tokens=6_789, cached_input_tokens=2_000, reasoning_tokens=1_234)

    returned = record(
        reservation=reservation,
        user_id=ordinary_user.pk,
        config=config,
        model="gpt-4o-2024-08-06",
        usage=usage,
        streamed=True,
        attempt=2,
    )

    row = UsageRecord.objects.get()
    assert row.pk == returned.pk
    assert (row.created_at, row.request_id, row.user, row.task) == (NOON, "req-7f3a", ordinary_user, "cv_drafting")
    assert (row.provider_config, row.provider_type, row.model) == (config, "openai", "gpt-4o-2024-08-06")
    assert (row.attempt, row.outcome, row.error_type, row.latency_ms, row.streamed) == (2, "success", "", 850, True)
    assert (
        row.input_tokens,
        row.output_tokens,
        row.cached_input_tokens,
        row.cache_write_tokens,
        row.reasoning_tokens,
    ) == (12_345, 6_789, 2_000, 0, 1_234)
    # (12,345 - 2,000) x 2.5 + 2,000 x 1.25 + 6,789 x 10 per million (genai-prices' gpt-4o rates)
    assert row.cost_usd == returned.cost_usd == Decimal("0.0962525000")
    assert row.priced and row.price_source == "genai-prices 0.2.3"
    assert TokenCounter.objects.get(period="day").used == 12_345 + 6_789


def test_anthropic_cache_writes_are_recorded_and_costed(provider_config):
    config = provider_config(provider_type="claude", model_name="claude-sonnet-4-5")
    usage = TokenUsage(
        input_tokens=10_000,
        output_tokens=2_000,
        cached_input_tokens=4_000,
        cache_write_tokens=1_000,
        reasoning_tokens=500,
    )

    record(config=config, provider_type="claude", model="claude-sonnet-4-5-20250929", usage=usage)

    row = UsageRecord.objects.get()
    assert (row.cache_write_tokens, row.cached_input_tokens, row.reasoning_tokens) == (1_000, 4_000, 500)
    assert row.cost_usd == Decimal("0.0499500000")


def test_an_unpriced_model_is_recorded_as_unpriced_not_free(provider_config):
    config = provider_config(provider_type="openai", model_name="llama-3.3-70b-on-my-laptop")

    record(config=config, model="", usage=TokenUsage(input_tokens=10, output_tokens=5))

    row = UsageRecord.objects.get()
    assert row.model == "llama-3.3-70b-on-my-laptop"  # nothing reported: as configured
    assert (row.cost_usd, row.priced, row.price_source) == (None, False, "")


def test_the_config_override_prices_the_row(provider_config):
    config = provider_config(
        provider_type="gemini",
        input_price_per_million=Decimal("2"),
        output_price_per_million=Decimal("8"),
    )

    record(config=config, provider_type="gemini", model="gemini-2.5-flash", usage=TokenUsage(1_000, 500))

    row = UsageRecord.objects.get()
    assert (row.cost_usd, row.price_source) == (Decimal("0.0060000000"), "override")


def test_the_environment_fallback_is_recorded_without_a_config():
    record(provider_type="gemini", model="gemini-2.5-flash", usage=TokenUsage(input_tokens=1_000, output_tokens=100))

    row = UsageRecord.objects.get()
    assert row.provider_config is None and row.provider_type == "gemini"
    assert row.cost_usd == Decimal("0.0005500000")  # 1,000 x 0.3 + 100 x 2.5 per million
    assert not TokenCounter.objects.exists()


def test_a_failed_attempt_without_usage_is_recorded_with_its_error(provider_config):
    config = provider_config(daily_token_limit=1_000)
    reservation = tokens_reserve(config=config, tokens=800, now=NOON)

    record(config=config, reservation=reservation, outcome="error", error_type="timeout", usage=None)

    row = UsageRecord.objects.get()
    assert (row.outcome, row.error_type, row.input_tokens, row.output_tokens) == ("error", "timeout", 0, 0)
    assert row.cost_usd == Decimal(0) and row.priced
    day = TokenCounter.objects.get(period="day")
    assert (day.used, day.reserved) == (0, 0)


def test_an_aborted_stream_records_the_tokens_consumed_so_far(provider_config):
    config = provider_config(provider_type="claude", model_name="claude-sonnet-4-5", monthly_token_limit=10_000)
    reservation = tokens_reserve(config=config, tokens=5_000, now=NOON)
    partial = TokenUsage(input_tokens=1_200, output_tokens=37, estimated=True)

    record(
        config=config, reservation=reservation, provider_type="claude", outcome="aborted", usage=partial, streamed=True
    )

    row = UsageRecord.objects.get()
    assert (row.outcome, row.input_tokens, row.output_tokens, row.streamed) == ("aborted", 1_200, 37, True)
    assert row.cost_usd == Decimal("0.0041550000")  # 1,200 x 3 + 37 x 15 per million
    assert TokenCounter.objects.get(period="month").used == 1_237


def test_invalid_output_is_an_outcome_of_its_own():
    record(outcome="invalid_output", usage=TokenUsage(input_tokens=10, output_tokens=10))

    assert UsageRecord.objects.get().outcome == "invalid_output"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"outcome": "exploded"}, "exploded"),
        ({"outcome": "error", "error_type": "gremlins"}, "gremlins"),
        ({"attempt": 0}, "1-based"),
    ],
)
def test_it_refuses_values_that_are_not_outcomes_error_types_or_attempts(overrides, message):
    with pytest.raises(ValueError, match=message):
        record(**overrides)

    assert not UsageRecord.objects.exists()


def test_settling_a_reservation_is_one_transaction_of_the_same_statements_on_both_databases(provider_config):
    config = provider_config(provider_type="openai", model_name="gpt-4o", daily_token_limit=10_000)
    reservation = tokens_reserve(config=config, tokens=1_000, now=NOON)

    with CaptureQueriesContext(connection) as context:
        record(config=config, reservation=reservation, usage=TokenUsage(input_tokens=100, output_tokens=10))

    sql = captured(context)
    # a receipt (so that the transaction, sent again after a lost connection, is recognised), lock the
    # reservation, settle month and day, delete the reservation, insert the row, add it to the daily and the
    # daily-by-user rollups, reset a failure count (a no-op here)
    assert first_words(sql) == ["INSERT", "SELECT", "UPDATE", "UPDATE", "DELETE", *["INSERT"] * 3, "UPDATE"]
    assert sql[0].startswith("INSERT INTO usage_receipt")
    assert ("FOR UPDATE" in sql[1]) == (connection.vendor == "postgresql")  # SQLite locks the whole database
    assert not ProviderCooldown.objects.exists()


def test_a_success_on_an_unlimited_config_known_to_be_healthy_is_only_inserts(provider_config, settings):
    config = provider_config(provider_type="openai", model_name="gpt-4o")

    with CaptureQueriesContext(connection) as context:
        record(config=config, usage=TokenUsage(input_tokens=100, output_tokens=10), known_failures=0)

    sql = captured(context)
    # the receipt, the row, then its two rollup upserts (in one transaction: see tests/usage/test_rollups.py)
    assert first_words(sql) == ["INSERT", "INSERT", "INSERT", "INSERT"], sql

    settings.USAGE_ROLLUPS_ENABLED = False
    with CaptureQueriesContext(connection) as context:
        record(config=config, usage=TokenUsage(input_tokens=100, output_tokens=10), known_failures=0)

    assert first_words(captured(context)) == ["INSERT", "INSERT"]


def test_settling_for_a_config_known_to_be_healthy_skips_the_health_reset(provider_config):
    config = provider_config(provider_type="openai", model_name="gpt-4o", daily_token_limit=10_000)
    reservation = tokens_reserve(config=config, tokens=1_000, now=NOON)

    with CaptureQueriesContext(connection) as context:
        record(config=config, reservation=reservation, usage=TokenUsage(100, 10), known_failures=0)

    sql = captured(context)
    assert first_words(sql) == ["INSERT", "SELECT", "UPDATE", "UPDATE", "DELETE", "INSERT", "INSERT", "INSERT"], sql


def built(config, *, input_tokens: int, output_tokens: int) -> UsageRecord:
    """An attempt of `config`'s model, built and costed, not saved."""
    return attempt_build(
        **{
            **ATTEMPT,
            "request_id": f"req-{input_tokens}",
            "task": "cover_letter",
            "config": config,
            "provider_type": config.provider_type,
            "model": config.model_name,
            "usage": TokenUsage(input_tokens, output_tokens),
            "latency_ms": 700,
        }
    )


@pytest.mark.django_db(transaction=True)  # saved from the event loop, over connections of its own
def test_attempts_saved_together_are_settled_each_exactly(provider_config):
    first = provider_config(provider_type="openai", model_name="gpt-4o", daily_token_limit=10_000)
    second = provider_config(provider_type="openai", model_name="gpt-4o-mini", monthly_token_limit=50_000)
    attempts = [
        Attempt(
            built(config, input_tokens=tokens, output_tokens=10),
            tokens_reserve(config=config, tokens=1_000, now=NOON),
            config,
            known_failures=0,
        )
        for config, tokens in ((second, 300), (first, 100), (second, 500), (first, 200))
    ]

    saved = asyncio.run(attempts_save_async(attempts))

    assert [row.pk is not None for row in saved] == [True] * 4
    assert sorted(UsageRecord.objects.values_list("input_tokens", flat=True)) == [100, 200, 300, 500]
    for config, used in ((first, 100 + 10 + 200 + 10), (second, 300 + 10 + 500 + 10)):
        for period in ("day", "month"):
            counter = TokenCounter.objects.get(provider_config=config, period=period)
            assert (counter.used, counter.reserved) == (used, 0)


@pytest.mark.django_db(transaction=True)
def test_one_attempt_that_cannot_be_saved_does_not_keep_the_others_from_being_saved(provider_config):
    config = provider_config(provider_type="openai", model_name="gpt-4o", daily_token_limit=10_000)
    attempts = [
        Attempt(
            built(config, input_tokens=tokens, output_tokens=10),
            tokens_reserve(config=config, tokens=1_000, now=NOON),
            config,
        )
        for tokens in (100, 200, 300)
    ]
    attempts[1].record.latency_ms = -1  # breaks the column's check constraint

    saved = asyncio.run(attempts_save_async(attempts))

    assert isinstance(saved[1], Exception)
    assert [saved[0].pk is not None, saved[2].pk is not None] == [True, True]
    assert sorted(UsageRecord.objects.values_list("input_tokens", flat=True)) == [100, 300]
    day = TokenCounter.objects.get(provider_config=config, period="day")
    assert (day.used, day.reserved) == (110 + 310, 1_000)  # the failed attempt's reservation is left to expire
