"""The seed's `ai_provider_usage_logs` table, as a view: the seed's own dashboard query runs on it unchanged."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

from providers.clients.base import TokenUsage
from usage.seed_views import COLUMNS, VIEW
from usage.services import attempt_record

# Verbatim from the seed ("Example Dashboard Query").
SEED_QUERY = """-- Daily cost by provider (last 30 days)
SELECT
    DATE(created_at) as date,
    provider_type,
    SUM(estimated_cost_usd)/100.0 as cost_usd,
    COUNT(*) as calls,
    AVG(latency_ms) as avg_latency_ms
FROM ai_provider_usage_logs
WHERE created_at >= NOW() - INTERVAL '30 days'
GROUP BY DATE(created_at), provider_type
ORDER BY date DESC, cost_usd DESC;
"""
# SQLite has neither NOW() nor INTERVAL: the one clause the README says to rewrite.
SQLITE_INTERVAL = ("NOW() - INTERVAL '30 days'", "datetime('now', '-30 days')")


def seed_query() -> str:
    if connection.vendor == "sqlite":
        return SEED_QUERY.replace(*SQLITE_INTERVAL)
    return SEED_QUERY


def run(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


@pytest.fixture
def calls(provider_config):
    """Priced calls today and three days ago, an unpriced one, and one from 40 days ago (outside the window)."""
    gpt = provider_config(
        provider_type="openai",
        display_name="GPT",
        model_name="gpt-4o",
        input_price_per_million=Decimal("2.50"),
        output_price_per_million=Decimal("10"),
    )
    claude = provider_config(
        provider_type="claude",
        display_name="Claude",
        model_name="claude-sonnet-4-5",
        input_price_per_million=Decimal("3"),
        output_price_per_million=Decimal("15"),
    )
    unpriced = provider_config(provider_type="gemini", display_name="Gemini", model_name="gemini-unpriced-x")
    now = datetime.now(UTC).replace(microsecond=0)
    today = now.replace(hour=0, minute=0, second=0) + timedelta(minutes=5)  # early today, so surely "today"
    rows = [
        # (config, when, input, output, latency, outcome)
        (gpt, today, 10_000, 2_000, 800, "success"),  # $0.045
        (gpt, today, 20_000, 1_000, 1_200, "success"),  # $0.06
        (claude, today, 10_000, 1_000, 2_000, "success"),  # $0.045
        (claude, today - timedelta(days=3), 100_000, 10_000, 3_000, "success"),  # $0.45
        (unpriced, today - timedelta(days=3), 5_000, 500, 400, "success"),  # unpriced: no cost
        (gpt, today - timedelta(days=40), 1_000_000, 0, 100, "success"),  # outside the 30 days
    ]
    for number, (config, when, tokens_in, tokens_out, latency, outcome) in enumerate(rows):
        attempt_record(
            reservation=None,
            request_id=f"req-seed-{number}",
            user_id=None,
            task="cover_letter",
            config=config,
            provider_type=config.provider_type,
            model=config.model_name,
            attempt=1,
            outcome=outcome,
            error_type="",
            usage=TokenUsage(tokens_in, tokens_out),
            latency_ms=latency,
            streamed=False,
            now=when,
        )
    return today.date()


@pytest.mark.django_db
def test_the_seeds_dashboard_query_runs_on_the_view(calls):
    today = calls
    three_days_ago = today - timedelta(days=3)

    rows = [
        (str(day), provider, round(Decimal(str(cost)), 6) if cost is not None else None, count, round(float(avg), 1))
        for day, provider, cost, count, avg in run(seed_query())
    ]

    unpriced = (str(three_days_ago), "gemini", None, 1, 400.0)  # its cost is unknown: NULL, never $0
    priced = (str(three_days_ago), "claude", Decimal("0.450000"), 1, 3000.0)
    assert rows == [
        (str(today), "openai", Decimal("0.105000"), 2, 1000.0),
        (str(today), "claude", Decimal("0.045000"), 1, 2000.0),
        # ORDER BY ... DESC puts NULL first on PostgreSQL and last on SQLite.
        *([unpriced, priced] if connection.vendor == "postgresql" else [priced, unpriced]),
    ]


@pytest.mark.django_db
def test_the_view_has_the_seeds_columns_with_the_cost_in_cents(calls):
    rows = run(
        f"SELECT request_id, provider_type, model_name, task_type, input_tokens, output_tokens, total_tokens, "
        f"estimated_cost_usd, success FROM {VIEW} ORDER BY request_id"
    )

    first = rows[0]
    assert first[:7] == ("req-seed-0", "openai", "gpt-4o", "cover_letter", 10_000, 2_000, 12_000)
    assert Decimal(str(first[7])) == Decimal("4.5")  # cents
    assert bool(first[8]) is True
    assert [name for name, _ in COLUMNS] == [
        column.name for column in connection.introspection.get_table_description(connection.cursor(), VIEW)
    ]


@pytest.mark.django_db(transaction=True)
def test_migrations_still_run_with_the_view_in_place_and_it_comes_back(calls):
    # Migrating usage back and forth drops the view first and creates it again after.
    call_command("migrate", "usage", "0002", verbosity=0)
    call_command("migrate", verbosity=0)

    assert VIEW in connection.introspection.table_names(include_views=True)
    assert len(run(f"SELECT id FROM {VIEW}")) == 6
