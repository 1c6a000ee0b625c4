import threading
from datetime import UTC, datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from providers.clients.base import TokenUsage
from tests.queries import sent_queries
from usage import services
from usage.models import Period, TokenCounter, TokenReservation, UsageRecord
from usage.services import LimitExceeded, attempt_record, reservations_expire, tokens_reserve, usage_for_config

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def counter(config, period: str) -> TokenCounter:
    return TokenCounter.objects.get(provider_config=config, period=period)


def record(config, reservation, *, input_tokens: int, output_tokens: int, now=None, outcome="success"):
    return attempt_record(
        reservation=reservation,
        request_id="req-1",
        user_id=None,
        task="extraction",
        config=config,
        provider_type=config.provider_type,
        model=config.model_name,
        attempt=1,
        outcome=outcome,
        error_type="",
        usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
        latency_ms=120,
        streamed=False,
        now=now,
    )


def statements(context: CaptureQueriesContext) -> list[str]:
    """The SQL a block ran, without the savepoints the test's own transaction adds (prepared statements read as
    their SQL)."""
    return [query for query in sent_queries(context) if "SAVEPOINT" not in query.upper()]


@pytest.fixture(autouse=True)
def _no_opportunistic_sweep(monkeypatch):
    # Tests that want the sweep from tokens_reserve ask for it; the others must not depend on its timing.
    monkeypatch.setattr(services, "_next_sweep", float("inf"))


def test_the_hand_written_sql_names_the_model_tables():
    for table, model in services.HAND_WRITTEN_SQL_TABLES.items():
        assert model._meta.db_table == table


def test_a_config_without_limits_reserves_nothing_and_asks_the_database_nothing(provider_config):
    config = provider_config()

    with CaptureQueriesContext(connection) as context:
        assert tokens_reserve(config=config, tokens=5_000) is None

    assert context.captured_queries == []


def test_a_reservation_holds_tokens_in_both_windows(provider_config):
    config = provider_config(daily_token_limit=1_000, monthly_token_limit=5_000)

    reservation = tokens_reserve(config=config, tokens=300, now=NOON)

    assert reservation.tokens == 300 and reservation.config_id == config.pk
    assert reservation.expires_at == NOON + timedelta(seconds=600)
    day, month = counter(config, Period.DAY), counter(config, Period.MONTH)
    assert (day.window_start, day.used, day.reserved) == (NOON.date(), 0, 300)
    assert (month.window_start.isoformat(), month.used, month.reserved) == ("2026-11-01", 0, 300)
    stored = TokenReservation.objects.get()
    assert (stored.day_counter_id, stored.month_counter_id, stored.tokens) == (day.pk, month.pk, 300)


def test_a_reservation_is_the_same_four_statements_on_both_databases(provider_config):
    config = provider_config(daily_token_limit=1_000)
    tokens_reserve(config=config, tokens=100, now=NOON)

    with CaptureQueriesContext(connection) as context:
        tokens_reserve(config=config, tokens=100, now=NOON)

    sql = statements(context)
    assert len(sql) == 4, sql
    # The window's counter rows made if missing; both locked, month first; the reservation inserted only if the
    # tokens fit both as they stand; the counters updated only if it was.
    assert sql[0].startswith("INSERT INTO usage_tokencounter") and "ON CONFLICT DO NOTHING" in sql[0]
    assert (
        sql[1].startswith("SELECT period, used, reserved FROM usage_tokencounter") and "ORDER BY period DESC" in sql[1]
    )
    assert ("FOR UPDATE" in sql[1]) == (connection.vendor == "postgresql")  # SQLite locks the whole database
    assert sql[2].startswith("INSERT INTO usage_tokenreservation") and "d.used + d.reserved + 100 <= 1000" in sql[2]
    assert sql[3].startswith("UPDATE usage_tokencounter SET reserved = reserved + 100")


def test_settling_swaps_the_reservation_for_the_actual_tokens(provider_config):
    config = provider_config(daily_token_limit=1_000, monthly_token_limit=5_000)
    reservation = tokens_reserve(config=config, tokens=600, now=NOON)

    usage_row = record(config, reservation, input_tokens=250, output_tokens=120, now=NOON)

    for period in (Period.DAY, Period.MONTH):
        assert (counter(config, period).used, counter(config, period).reserved) == (370, 0)
    assert not TokenReservation.objects.exists()
    assert UsageRecord.objects.get().pk == usage_row.pk


def test_settled_tokens_free_room_for_the_next_call(provider_config):
    config = provider_config(daily_token_limit=1_000)
    first = tokens_reserve(config=config, tokens=900, now=NOON)
    with pytest.raises(LimitExceeded):
        tokens_reserve(config=config, tokens=200, now=NOON)

    record(config, first, input_tokens=500, output_tokens=100, now=NOON)

    assert tokens_reserve(config=config, tokens=400, now=NOON) is not None
    with pytest.raises(LimitExceeded):
        tokens_reserve(config=config, tokens=1, now=NOON)


def test_a_refusal_says_which_limit_and_when_it_resets(provider_config):
    config = provider_config(display_name="Gemini Fast", daily_token_limit=10_000)
    record(config, tokens_reserve(config=config, tokens=9_000, now=NOON), input_tokens=8_000, output_tokens=1_000)

    with pytest.raises(LimitExceeded) as refused:
        tokens_reserve(config=config, tokens=1_001, now=NOON)

    error = refused.value
    assert (error.config_id, error.period, error.limit) == (config.pk, "day", 10_000)
    assert error.resets_at == datetime(2026, 11, 27, tzinfo=UTC)
    assert str(error) == "Gemini Fast is over its daily token limit (10,000); it resets at 2026-11-27 00:00 UTC"
    assert counter(config, Period.DAY).used == 9_000


def test_a_call_bigger_than_the_limit_is_refused_without_a_query(provider_config):
    config = provider_config(monthly_token_limit=500)

    with CaptureQueriesContext(connection) as context, pytest.raises(LimitExceeded) as refused:
        tokens_reserve(config=config, tokens=501, now=NOON)

    assert context.captured_queries == []
    assert refused.value.period == "month" and refused.value.resets_at == datetime(2026, 12, 1, tzinfo=UTC)


def test_a_full_month_refuses_and_leaves_the_day_untouched(provider_config):
    config = provider_config(daily_token_limit=1_000, monthly_token_limit=1_500)
    yesterday = NOON - timedelta(days=1)
    record(config, tokens_reserve(config=config, tokens=800, now=yesterday), input_tokens=800, output_tokens=0)

    with pytest.raises(LimitExceeded) as refused:
        tokens_reserve(config=config, tokens=800, now=NOON)

    assert refused.value.period == "month"
    assert counter(config, Period.MONTH).reserved == 0
    assert not TokenCounter.objects.filter(period=Period.DAY, window_start=NOON.date(), reserved__gt=0).exists()
    assert not TokenReservation.objects.exists()


def test_a_full_day_refuses_and_rolls_back_the_month(provider_config):
    config = provider_config(daily_token_limit=1_000, monthly_token_limit=5_000)
    record(config, tokens_reserve(config=config, tokens=900, now=NOON), input_tokens=900, output_tokens=0, now=NOON)

    with pytest.raises(LimitExceeded) as refused:
        tokens_reserve(config=config, tokens=200, now=NOON)

    assert refused.value.period == "day"
    month = counter(config, Period.MONTH)
    assert (month.used, month.reserved) == (900, 0)
    assert not TokenReservation.objects.exists()


def test_the_day_resets_at_local_midnight_of_the_configured_time_zone(provider_config, settings):
    settings.TIME_ZONE = "Pacific/Auckland"  # UTC+13 in November
    auckland = ZoneInfo("Pacific/Auckland")
    config = provider_config(daily_token_limit=100)
    before_midnight = datetime(2026, 11, 26, 23, 59, tzinfo=auckland)  # 10:59 UTC, same UTC day as NOON
    record(config, tokens_reserve(config=config, tokens=100, now=before_midnight), input_tokens=100, output_tokens=0)

    with pytest.raises(LimitExceeded) as refused:
        tokens_reserve(config=config, tokens=1, now=before_midnight + timedelta(seconds=59))
    assert refused.value.resets_at == datetime(2026, 11, 27, 0, 0, tzinfo=auckland)
    assert refused.value.resets_at == datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    assert str(refused.value).endswith("it resets at 2026-11-27 00:00 NZDT")

    after_midnight = datetime(2026, 11, 27, 0, 0, tzinfo=auckland)
    reservation = tokens_reserve(config=config, tokens=100, now=after_midnight)

    assert TokenCounter.objects.get(pk=reservation.day_counter_id).window_start.isoformat() == "2026-11-27"


def test_the_month_starts_on_the_first_in_the_configured_time_zone(provider_config, settings):
    settings.TIME_ZONE = "America/New_York"
    new_york = ZoneInfo("America/New_York")
    config = provider_config(monthly_token_limit=100)
    # 04:30 UTC on the 1st of December is still the 30th of November in New York.
    late_november = datetime(2026, 12, 1, 4, 30, tzinfo=UTC)
    record(config, tokens_reserve(config=config, tokens=100, now=late_november), input_tokens=60, output_tokens=40)

    with pytest.raises(LimitExceeded) as refused:
        tokens_reserve(config=config, tokens=1, now=late_november)
    assert refused.value.resets_at == datetime(2026, 12, 1, tzinfo=new_york)

    december = tokens_reserve(config=config, tokens=100, now=datetime(2026, 12, 1, tzinfo=new_york))
    assert TokenCounter.objects.get(pk=december.month_counter_id).window_start.isoformat() == "2026-12-01"


def test_an_expired_reservation_is_charged_once_as_an_unsettled_usage_row(provider_config):
    config = provider_config(daily_token_limit=1_000)
    reservation = tokens_reserve(
        config=config,
        tokens=700,
        hold=services.Hold(request_id="req-lost", user_id=None, task="cover_letter", input_tokens=200),
        now=NOON,
    )

    assert reservations_expire(now=NOON + timedelta(seconds=599)) == 0
    assert counter(config, Period.DAY).reserved == 700
    assert reservations_expire(now=NOON + timedelta(seconds=600)) == 1
    assert reservations_expire(now=NOON + timedelta(seconds=601)) == 0

    # Its worker died mid-call: what was reserved is charged, so the budget counts it.
    for period in (Period.DAY, Period.MONTH):
        assert (counter(config, period).used, counter(config, period).reserved) == (700, 0)
    assert not TokenReservation.objects.exists()
    row = UsageRecord.objects.get()
    assert (row.request_id, row.task, row.outcome) == ("req-lost", "cover_letter", "unsettled")
    assert (row.input_tokens, row.output_tokens) == (200, 500)
    assert row.priced and row.cost_usd > 0

    # The worker comes back after all: the reservation is not released twice, and its tokens still count (an
    # over-count, never an under-count: see usage.services).
    record(config, reservation, input_tokens=300, output_tokens=50, now=NOON + timedelta(seconds=700))
    for period in (Period.DAY, Period.MONTH):
        assert (counter(config, period).used, counter(config, period).reserved) == (1_050, 0)


def test_the_ttl_comes_from_settings(provider_config, settings):
    settings.TOKEN_RESERVATION_TTL_SECONDS = 5
    config = provider_config(daily_token_limit=1_000)

    reservation = tokens_reserve(config=config, tokens=10, now=NOON)

    assert reservation.expires_at == NOON + timedelta(seconds=5)
    assert reservations_expire(now=NOON + timedelta(seconds=5)) == 1


def test_reserving_sweeps_expired_reservations_now_and_then(provider_config, monkeypatch):
    config = provider_config(daily_token_limit=1_000)
    tokens_reserve(config=config, tokens=600, now=NOON)
    later = NOON + timedelta(seconds=601)
    tokens_reserve(config=config, tokens=100, now=later)  # no sweep due yet
    assert counter(config, Period.DAY).reserved == 700

    monkeypatch.setattr(services, "_next_sweep", 0.0)
    tokens_reserve(config=config, tokens=100, now=later)

    day = counter(config, Period.DAY)
    assert (day.used, day.reserved) == (600, 200)
    assert UsageRecord.objects.get().outcome == "unsettled"
    assert services._next_sweep > 0


def test_usage_without_a_reservation_still_counts_for_a_limited_config(provider_config):
    config = provider_config(daily_token_limit=1_000)

    record(config, None, input_tokens=400, output_tokens=200, now=NOON)

    assert counter(config, Period.DAY).used == 600 and counter(config, Period.MONTH).used == 600
    with pytest.raises(LimitExceeded):
        tokens_reserve(config=config, tokens=401, now=NOON)


def test_usage_of_an_unlimited_config_touches_no_counter(provider_config):
    config = provider_config()

    record(config, None, input_tokens=400, output_tokens=200, now=NOON)

    assert not TokenCounter.objects.exists()
    assert UsageRecord.objects.get().input_tokens == 400


def test_usage_for_config_reports_both_windows(provider_config):
    config = provider_config(daily_token_limit=1_000)
    record(config, tokens_reserve(config=config, tokens=500, now=NOON), input_tokens=300, output_tokens=0, now=NOON)
    tokens_reserve(config=config, tokens=200, now=NOON)

    with CaptureQueriesContext(connection) as context:
        report = usage_for_config(config=config, now=NOON)

    assert len(context.captured_queries) == 1
    assert report["day"] == {
        "window_start": NOON.date(),
        "resets_at": datetime(2026, 11, 27, tzinfo=UTC),
        "used": 300,
        "reserved": 200,
        "limit": 1_000,
    }
    assert report["month"]["used"] == 300 and report["month"]["limit"] is None
    assert report["month"]["resets_at"] == datetime(2026, 12, 1, tzinfo=UTC)


def test_sequential_reservations_admit_exactly_what_the_limit_allows(provider_config):
    config = provider_config(daily_token_limit=1_000)

    outcomes = []
    for _ in range(50):
        try:
            outcomes.append(tokens_reserve(config=config, tokens=100, now=NOON))
        except LimitExceeded:
            outcomes.append(None)

    assert sum(reservation is not None for reservation in outcomes) == 10
    assert outcomes[:10] == [reservation for reservation in outcomes if reservation is not None]
    assert counter(config, Period.DAY).reserved == 1_000


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite serialises every writer on one database lock, so it cannot show a race; CI runs this on PostgreSQL",
)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("binding", ["day", "month"])
def test_fifty_concurrent_calls_against_a_limit_for_ten_admit_exactly_ten(provider_config, binding):
    # The other window has plenty of room; making each window the binding one in turn races both checks.
    field = {"day": "daily_token_limit", "month": "monthly_token_limit"}[binding]
    config = provider_config(**{"daily_token_limit": 100_000, "monthly_token_limit": 100_000, field: 1_000})
    start = threading.Barrier(50)
    admitted: list[int] = []
    refused: list[LimitExceeded] = []
    failures: list[BaseException] = []

    def call() -> None:
        try:
            start.wait()
            try:
                reservation = tokens_reserve(config=config, tokens=100)
            except LimitExceeded as error:
                refused.append(error)
                return
            admitted.append(reservation.id)
            record(config, reservation, input_tokens=70, output_tokens=30)
        except BaseException as error:  # surface anything else (deadlocks, lost connections) in the test
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=call) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert failures == []
    assert len(admitted) == 10 and len(refused) == 40
    assert all(error.period == binding and error.limit == 1_000 for error in refused)
    for period in (Period.DAY, Period.MONTH):
        assert (counter(config, period).used, counter(config, period).reserved) == (1_000, 0)
    assert UsageRecord.objects.filter(provider_config=config).count() == 10
    assert not TokenReservation.objects.exists()


def test_the_command_releases_expired_reservations(provider_config, settings):
    settings.TOKEN_RESERVATION_TTL_SECONDS = 1
    config = provider_config(daily_token_limit=1_000)
    tokens_reserve(config=config, tokens=400, now=datetime.now(tz=UTC) - timedelta(seconds=5))
    output = StringIO()

    call_command("expire_token_reservations", stdout=output)

    assert output.getvalue().strip() == "Charged 1 expired token reservation as unsettled."
    assert counter(config, Period.DAY).reserved == 0


def test_a_window_full_only_of_calls_in_flight_says_so_and_when_to_try_again(provider_config):
    config = provider_config(display_name="Tight", daily_token_limit=3_000)
    tokens_reserve(config=config, tokens=2_165, now=NOON)  # a call in flight; nothing used yet

    with pytest.raises(LimitExceeded) as refused:
        tokens_reserve(config=config, tokens=1_000, now=NOON)

    assert refused.value.in_flight
    assert "held by calls in flight" in str(refused.value)
    assert 0 < (refused.value.retry_at() - timezone.now()).total_seconds() <= services.IN_FLIGHT_RETRY_SECONDS


def test_a_window_used_up_says_when_it_resets(provider_config):
    config = provider_config(display_name="Tight", daily_token_limit=3_000)
    reservation = tokens_reserve(config=config, tokens=2_500, now=NOON)
    record(config, reservation, input_tokens=2_000, output_tokens=500, now=NOON)

    with pytest.raises(LimitExceeded) as refused:
        tokens_reserve(config=config, tokens=1_000, now=NOON)

    assert not refused.value.in_flight
    assert refused.value.retry_at() == refused.value.resets_at
    assert "resets at" in str(refused.value)


@pytest.mark.django_db(transaction=True)  # reserved from the event loop, over connections of its own
def test_a_reservation_whose_caller_went_away_is_given_back_not_left_to_expire(provider_config):
    import asyncio

    from runtime import db

    config = provider_config(daily_token_limit=10_000)
    hold = services.Hold(request_id="req-gone", task="cover_letter", input_tokens=100)

    async def scenario():
        async with db.pooled():
            caller = asyncio.ensure_future(services.tokens_reserve_async(config=config, tokens=500, hold=hold))
            await asyncio.sleep(0)  # the reservation is under way
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            for _ in range(200):  # the reservation is made after all, then given back
                await asyncio.sleep(0.01)
                if await asyncio.to_thread(lambda: UsageRecord.objects.filter(request_id="req-gone").exists()):
                    break

    asyncio.run(scenario())

    assert not TokenReservation.objects.exists()
    row = UsageRecord.objects.get(request_id="req-gone")
    assert (row.outcome, row.input_tokens + row.output_tokens) == ("aborted", 0)
    day = counter(config, Period.DAY)
    assert (day.used, day.reserved) == (0, 0)
