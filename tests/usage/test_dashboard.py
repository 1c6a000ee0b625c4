"""The "Usage statistics" admin page, its CSV, and today's tokens on the provider config list."""

import csv
import io
import re
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from providers.clients.base import TokenUsage
from usage.charts import Series, line_chart, nice_ceiling, stacked_bar_chart
from usage.services import attempt_record

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/usage/usagerecord/dashboard/"
CONFIG_LIST = "/admin/providers/providerconfig/"


def at(days_ago: int, hour: int = 12) -> datetime:
    """A moment `days_ago` local days before today, at `hour` local time."""
    day = timezone.localdate(timezone=timezone.get_default_timezone()) - timedelta(days=days_ago)
    return datetime.combine(day, time(hour), tzinfo=timezone.get_default_timezone())


def record(*, config, provider_type, model, outcome="success", error_type="", tokens=(0, 0), latency_ms, when):
    return attempt_record(
        reservation=None,
        request_id=f"req-{when:%j%H}-{latency_ms}",
        user_id=None,
        task="extraction",
        config=config,
        provider_type=provider_type,
        model=model,
        attempt=1,
        outcome=outcome,
        error_type=error_type,
        usage=TokenUsage(*tokens),
        latency_ms=latency_ms,
        streamed=False,
        now=when,
    )


@pytest.fixture
def usage(provider_config):
    """Six calls in the last 30 days over three providers, and one older call. Costs from price overrides:

    OpenAI (GPT Main: $2.50 in, $10 out per million): 1000+200 tokens = $0.0045, a timeout, 2000+500 = $0.01.
    Claude (Claude Backup: $3 in, $15 out): 10000+1000 tokens = $0.045, and a rate-limited error.
    Gemini (the environment fallback, a model without a price): 500+50 tokens, unpriced.
    """
    gpt = provider_config(
        provider_type="openai",
        display_name="GPT Main",
        model_name="gpt-4o",
        input_price_per_million=Decimal("2.50"),
        output_price_per_million=Decimal("10"),
        daily_token_limit=100_000,
        monthly_token_limit=1_000_000,
    )
    claude = provider_config(
        provider_type="claude",
        display_name="Claude Backup",
        model_name="claude-sonnet-4-5",
        input_price_per_million=Decimal("3"),
        output_price_per_million=Decimal("15"),
    )
    record(config=gpt, provider_type="openai", model="gpt-4o", tokens=(1000, 200), latency_ms=400, when=at(0, 0))
    record(
        config=gpt, provider_type="openai", model="gpt-4o", outcome="error", error_type="timeout",
        latency_ms=30_000, when=at(2),
    )  # fmt: skip
    record(config=gpt, provider_type="openai", model="gpt-4o", tokens=(2000, 500), latency_ms=600, when=at(2, 13))
    record(config=claude, provider_type="claude", model="claude-sonnet-4-5", tokens=(10_000, 1000), latency_ms=1200,
           when=at(5))  # fmt: skip
    record(
        config=claude, provider_type="claude", model="claude-sonnet-4-5", outcome="error",
        error_type="rate_limited", latency_ms=100, when=at(5, 14),
    )  # fmt: skip
    record(config=None, provider_type="gemini", model="gemini-no-such-model", tokens=(500, 50), latency_ms=800,
           when=at(1))  # fmt: skip
    # 40 days ago: in the 90-day range only.
    record(config=gpt, provider_type="openai", model="gpt-4o", tokens=(4000, 0), latency_ms=500, when=at(40))
    return {"gpt": gpt, "claude": claude}


def cells(html: str, provider: str) -> dict[str, str]:
    """The provider table's row for `provider` ("" for the totals) as {field: shown text}."""
    row = re.search(rf'<tr data-provider="{provider}">(.*?)</tr>', html, re.S)
    assert row, f"no row for {provider!r}"
    found = re.findall(r'data-field="(\w+)"[^>]*>(.*?)</td>', row.group(1), re.S)
    return {field: re.sub(r"<[^>]+>", "", text).split("+")[0].strip() for field, text in found}


def verified_client(user) -> Client:
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = Client()
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


# The page -------------------------------------------------------------------------------------------------------


def test_it_shows_exact_figures_per_provider_for_a_hand_computed_fixture(superadmin_session_client, usage):
    response = superadmin_session_client.get(DASHBOARD)

    assert response.status_code == 200
    html = response.content.decode()
    assert cells(html, "openai") == {
        "calls": "3",
        "tokens": "3,700",
        "cost": "$0.0145",
        "success_rate": "66.67%",
        "avg_latency": "10,333.3 ms",
        "p95_latency": "28,500 ms",  # interpolated in the 20-30 s bucket of the histogram
    }
    assert cells(html, "claude") == {
        "calls": "2",
        "tokens": "11,000",
        "cost": "$0.0450",
        "success_rate": "50.00%",
        "avg_latency": "650.0 ms",
        "p95_latency": "1,450 ms",  # 1000 + 500 × 0.9 in the 1-1.5 s bucket
    }
    assert cells(html, "gemini")["cost"] == "$0.00" and "+ 1 unpriced" in html
    assert cells(html, "") == {
        "calls": "6",
        "tokens": "15,250",
        "cost": "$0.0595",
        "success_rate": "66.67%",
        "avg_latency": "5,516.7 ms",
        "p95_latency": "27,000 ms",
    }
    assert 'data-field="cost" data-value="0.0145000000"' in html
    assert 'title="timeout: 1"' in html and 'title="rate limited: 1"' in html
    # Ordered as the selectors order providers; each appears once.
    assert [m for m in re.findall(r'<tr data-provider="(\w+)">', html)] == ["claude", "gemini", "openai"]


def test_the_range_selects_7_30_or_90_days(superadmin_session_client, usage):
    seven = superadmin_session_client.get(DASHBOARD, {"days": 7}).content.decode()
    ninety = superadmin_session_client.get(DASHBOARD, {"days": 90}).content.decode()

    assert cells(seven, "")["calls"] == "6"
    assert cells(ninety, "openai")["calls"] == "4" and cells(ninety, "openai")["tokens"] == "7,700"
    assert cells(ninety, "")["cost"] == "$0.0695"  # + 4000 input tokens at $2.50 per million
    assert 'href="?days=90" aria-current="page"' in ninety


def test_a_bad_range_shows_the_default_with_a_message(superadmin_session_client, usage):
    response = superadmin_session_client.get(DASHBOARD, {"days": "365"})

    assert response.status_code == 200
    html = response.content.decode()
    assert "There is no &#x27;365&#x27;-day range; showing the last 30 days" in html
    assert 'href="?days=30" aria-current="page"' in html and cells(html, "")["calls"] == "6"


def test_it_renders_an_empty_state_without_usage(superadmin_session_client, provider_config):
    provider_config(display_name="Idle", daily_token_limit=5000)

    response = superadmin_session_client.get(DASHBOARD)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="usage-empty"' in html and "No provider calls in the last 30 days." in html
    assert 'class="usage-chart"' not in html and 'id="provider-table"' not in html
    assert "0 / 5,000" in html  # the limits still show


def test_it_shows_todays_and_this_months_tokens_against_the_limits(superadmin_session_client, usage):
    html = superadmin_session_client.get(DASHBOARD).content.decode()

    row = re.search(rf'<tr data-config="{usage["gpt"].pk}">(.*?)</tr>', html, re.S).group(1)
    assert "1,200 / 100,000" in row and "(1%)" in row
    assert 'role="meter"' in row and 'aria-valuenow="1200"' in row and 'style="width: 1.20%"' in row
    # This month: today's call, plus those of 2 days ago when they fell in this month.
    month = 1200 + (2500 if at(2).month == at(0).month else 0)
    assert f"{month:,} / 1,000,000" in row
    claude = re.search(rf'<tr data-config="{usage["claude"].pk}">(.*?)</tr>', html, re.S).group(1)
    assert "No token limits" in claude and "/ ∞" not in claude


def test_the_charts_are_server_side_svg_with_titles_axes_and_legends(superadmin_session_client, usage):
    html = superadmin_session_client.get(DASHBOARD).content.decode()

    assert html.count('role="img" class="usage-chart"') == 3
    for chart_id, title in [
        ("chart-cost", "Cost per day by provider (USD)"),
        ("chart-calls", "Calls and errors per day"),
        ("chart-latency", "Latency per day (ms)"),
    ]:
        assert f'<title id="{chart_id}-title">{title}</title>' in html
        assert f'aria-labelledby="{chart_id}-title {chart_id}-desc"' in html
    assert re.search(r"<title>\w+ \d+ · OpenAI: \$0\.0100</title>", html)  # 2 days ago
    assert re.search(r"<title>\w+ \d+ · Errors: 1</title>", html)
    assert re.search(r"<title>\w+ \d+ · 95th percentile: [\d,]+ ms</title>", html)
    assert 'class="legend"' in html and ">Anthropic Claude</text>" in html
    assert "<script" not in html.split('id="content-main"')[1]  # no chart library
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")


def test_the_page_makes_the_same_few_queries_whatever_the_data(
    superadmin_session_client, usage, provider_config, django_assert_max_num_queries
):
    for number in range(5):
        provider_config(display_name=f"Extra {number}", daily_token_limit=1000)

    # Session, user and OTP device; the stats (and their config names); the configs and their counters.
    with django_assert_max_num_queries(8):
        response = superadmin_session_client.get(DASHBOARD, {"days": 90})
    assert response.status_code == 200


def test_the_index_links_to_the_page(superadmin_session_client):
    html = superadmin_session_client.get("/admin/").content.decode()

    assert f'<a href="{DASHBOARD}">Usage statistics</a>' in html


# CSV ----------------------------------------------------------------------------------------------------------


def test_the_csv_export_has_the_table_with_decimal_costs(superadmin_session_client, usage):
    response = superadmin_session_client.get(DASHBOARD, {"format": "csv"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    start, end = at(29).date(), at(0).date()
    assert response["Content-Disposition"] == f'attachment; filename="usage-by-provider-{start}-to-{end}.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows == [
        [
            "provider", "calls", "successes", "errors", "success_rate", "input_tokens", "output_tokens",
            "total_tokens", "cost_usd", "unpriced_calls", "avg_latency_ms", "p95_latency_ms",
        ],
        ["claude", "2", "1", "1", "0.5", "10000", "1000", "11000", "0.0450000000", "0", "650.0", "1450"],
        ["gemini", "1", "1", "0", "1.0", "500", "50", "550", "0.0000000000", "1", "800.0", "988"],
        ["openai", "3", "2", "1", "0.6667", "3000", "700", "3700", "0.0145000000", "0", "10333.3", "28500"],
    ]  # fmt: skip


def test_the_csv_export_of_an_empty_range_has_only_the_header(superadmin_session_client):
    response = superadmin_session_client.get(DASHBOARD, {"format": "csv", "days": 7})

    assert response.content.decode().splitlines() == [
        "provider,calls,successes,errors,success_rate,input_tokens,output_tokens,total_tokens,cost_usd,"
        "unpriced_calls,avg_latency_ms,p95_latency_ms"
    ]


# Access -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outsider", ["anonymous", "ordinary_user", "superuser_without_otp", "staff_without_otp"])
def test_outsiders_are_sent_to_the_login(request, outsider, django_user_model):
    client = Client()
    if outsider == "staff_without_otp":
        client.force_login(django_user_model.objects.create_user("stan", password="x", is_staff=True))
    elif outsider != "anonymous":
        client.force_login(request.getfixturevalue(outsider))

    for query in ({}, {"format": "csv"}):
        response = client.get(DASHBOARD, query)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), outsider


def test_it_refuses_verified_staff_without_permission_to_view_usage(django_user_model):
    staff = django_user_model.objects.create_user("stan", password="x", is_staff=True)
    client = verified_client(staff)

    assert client.get(DASHBOARD).status_code == 403
    assert client.get(DASHBOARD, {"format": "csv"}).status_code == 403
    assert "Usage statistics" not in client.get("/admin/").content.decode()


def test_it_refuses_verified_staff_even_with_permission_to_view_usage(django_user_model, usage):
    # Only super-admins see usage (issue 14, item 5), whatever model permissions a staff account has.
    staff = django_user_model.objects.create_user("vera", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    client = verified_client(staff)

    response = client.get(DASHBOARD)
    assert response.status_code == 403


# The provider config list -----------------------------------------------------------------------------------


def test_the_config_list_shows_todays_tokens_against_the_daily_limit(superadmin_session_client, usage):
    html = superadmin_session_client.get(CONFIG_LIST).content.decode()

    assert "Tokens today / limit" in html
    assert '<td class="field-tokens_today">1,200 / 100,000</td>' in html
    assert '<td class="field-tokens_today">— / ∞</td>' in html  # no limit, so no counter


def test_a_config_with_only_a_monthly_limit_shows_todays_tokens_against_no_daily_limit(
    superadmin_session_client, provider_config
):
    config = provider_config(monthly_token_limit=5_000_000)
    record(config=config, provider_type="gemini", model="gemini-2.5-flash", tokens=(12_000, 345), latency_ms=1,
           when=timezone.now())  # fmt: skip

    html = superadmin_session_client.get(CONFIG_LIST).content.decode()

    assert '<td class="field-tokens_today">12,345 / ∞</td>' in html


def test_the_config_list_reads_the_counters_in_one_query_for_the_page(superadmin_session_client, provider_config):
    def queries() -> int:
        with CaptureQueriesContext(connection) as context:
            assert superadmin_session_client.get(CONFIG_LIST).status_code == 200
        return len(context.captured_queries)

    config = provider_config(daily_token_limit=10)
    record(config=config, provider_type="gemini", model="gemini-2.5-flash", tokens=(3, 4), latency_ms=1,
           when=timezone.now())  # fmt: skip
    one = queries()
    for _ in range(6):
        provider_config(daily_token_limit=1000)
    assert queries() == one
    assert '<td class="field-tokens_today">7 / 10</td>' in superadmin_session_client.get(CONFIG_LIST).content.decode()


# The chart drawing ------------------------------------------------------------------------------------------


def test_nice_ceilings_hold_the_value_in_round_steps():
    assert nice_ceiling(0) == (1.0, 0.2)
    assert nice_ceiling(7) == (10.0, 2.0)
    assert nice_ceiling(123) == (125.0, 25.0)
    assert nice_ceiling(0.0145) == (0.025, 0.005)
    # Counts step by whole numbers.
    assert nice_ceiling(2, whole=True) == (2.0, 1.0)
    assert nice_ceiling(12, whole=True) == (15.0, 3.0)
    assert nice_ceiling(120, whole=True) == (125.0, 25.0)
    assert nice_ceiling(0, whole=True) == (1.0, 1.0)


def test_a_line_chart_leaves_gaps_where_there_is_no_value_and_escapes_names():
    svg = line_chart(
        chart_id="c",
        title="T <1>",
        description="D",
        x_labels=["a", "b", "c", "d"],
        series=[Series("<b>x</b>", [1, None, 3, 4])],
        value_format=str,
    )

    assert svg.count("<polyline") == 2  # [a] and [c, d]
    assert svg.count("<circle") == 3
    assert "&lt;b&gt;x&lt;/b&gt;" in svg and "<b>" not in svg and "T &lt;1&gt;" in svg


def test_a_stacked_bar_chart_stacks_the_series_and_titles_the_total():
    svg = stacked_bar_chart(
        chart_id="c",
        title="T",
        description="D",
        x_labels=["Mon", "Tue"],
        series=[Series("A", [Decimal("1.5"), 0]), Series("B", [Decimal("2.5"), Decimal("1")])],
        value_format=lambda v: f"${v}",
    )

    assert svg.count('class="bar"') == 3  # a zero draws nothing
    assert "<title>Mon · total: $4.0</title>" in svg and "<title>Tue · B: $1</title>" in svg
