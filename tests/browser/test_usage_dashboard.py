"""The usage dashboard in a real browser: log in with a TOTP code, open the page, and hold it to the stats API."""

import json
import urllib.request
from datetime import datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlsplit

import pytest
from django.utils import timezone

from providers.clients.base import TokenUsage
from tests.auth_fixtures import PASSWORD, bearer, totp_code
from tests.browser.conftest import save_screenshot
from usage.services import attempt_record

pytestmark = pytest.mark.django_db(transaction=True)


def log_in(page, live_server, user, device):
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.fill("#id_otp_token", totp_code(device))
    page.click("input[type=submit]:not([name=otp_challenge])")
    page.wait_for_selector("#user-tools")


def at(days_ago: int, hour: int) -> datetime:
    day = timezone.localdate(timezone=timezone.get_default_timezone()) - timedelta(days=days_ago)
    return datetime.combine(day, time(hour), tzinfo=timezone.get_default_timezone())


@pytest.fixture
def recorded_usage(provider_config):
    """Calls over three providers and several days, recorded the real way (rollups and counters included)."""
    gpt = provider_config(
        provider_type="openai",
        display_name="GPT Main",
        model_name="gpt-4o",
        input_price_per_million=Decimal("2.50"),
        output_price_per_million=Decimal("10"),
        daily_token_limit=50_000,
        monthly_token_limit=2_000_000,
    )
    claude = provider_config(provider_type="claude", display_name="Claude Backup", model_name="claude-sonnet-4-5")
    gemini = provider_config(provider_type="gemini", display_name="Gemini Fast", daily_token_limit=20_000)
    calls = [
        # (config, outcome, error type, input tokens, output tokens, latency ms, days ago, hour)
        (gpt, "success", "", 1200, 300, 850, 0, 1),
        (gpt, "success", "", 2400, 650, 1400, 3, 9),
        (gpt, "error", "timeout", 0, 0, 30_000, 3, 10),
        (claude, "success", "", 5000, 900, 2100, 1, 14),
        (claude, "error", "rate_limited", 0, 0, 120, 12, 8),
        (claude, "invalid_output", "", 800, 400, 1700, 12, 9),
        (gemini, "success", "", 15_000, 1200, 600, 0, 0),
        (gemini, "success", "", 700, 90, 450, 25, 16),
        (gemini, "success", "", 9000, 9000, 400, 45, 16),  # outside the 30 days
    ]
    for number, (config, outcome, error_type, tokens_in, tokens_out, latency, days_ago, hour) in enumerate(calls):
        attempt_record(
            reservation=None,
            request_id=f"browser-{number}",
            user_id=None,
            task="extraction",
            config=config,
            provider_type=config.provider_type,
            model=config.model_name,
            attempt=1,
            outcome=outcome,
            error_type=error_type,
            usage=TokenUsage(tokens_in, tokens_out),
            latency_ms=latency,
            streamed=False,
            now=at(days_ago, hour),
        )


def stats_api(live_server, token: str) -> dict:
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/super-admin/providers/usage/stats?days=30&group_by=provider",
        headers={"Authorization": bearer(token)["HTTP_AUTHORIZATION"]},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (the test's own live server)
        assert response.status == 200
        return json.load(response)


def shown_number(text: str) -> int:
    return int(text.replace(",", ""))


def shown_cost(cost_usd: str) -> str:
    """How the page shows an exact cost: cents from a dollar up, else 4 places."""
    value = Decimal(cost_usd)
    places = Decimal("0.01") if value >= 1 or value == 0 else Decimal("0.0001")
    return f"${value.quantize(places, rounding=ROUND_HALF_UP):,}"


def test_the_dashboard_shows_what_the_stats_api_answers(
    page, live_server, superadmin, superadmin_device, superadmin_token, recorded_usage
):
    requested_hosts = set()
    page.on("request", lambda request: requested_hosts.add(urlsplit(request.url).netloc))

    log_in(page, live_server, superadmin, superadmin_device)
    page.click("text=Usage statistics")
    page.wait_for_selector("#provider-table")
    assert page.locator(".usage-range a[aria-current=page]").inner_text() == "30 days"

    shown = {}
    for row in page.locator("#provider-table tr[data-provider]").all():
        values = {
            field: row.locator(f'[data-field="{field}"]').inner_text().split("+")[0].strip()
            for field in ("calls", "tokens", "cost")
        }
        values["exact_cost"] = row.locator('[data-field="cost"]').get_attribute("data-value")
        shown[row.get_attribute("data-provider")] = values

    api = stats_api(live_server, superadmin_token)
    expected = {group["provider"]: group for group in api["groups"]} | {"": api["totals"]}
    assert set(shown) == set(expected) == {"openai", "claude", "gemini", ""}
    for provider, group in expected.items():
        assert shown[provider] == {
            "calls": f"{group['calls']:,}",
            "tokens": f"{group['input_tokens'] + group['output_tokens']:,}",
            "cost": shown_cost(group["cost_usd"]),
            "exact_cost": group["cost_usd"],
        }, provider
        assert shown_number(shown[provider]["calls"]) == group["calls"]
    # Hand-checked against the fixture, so that agreeing on a wrong answer would not pass.
    assert api["totals"]["calls"] == 8 and shown[""]["tokens"] == "28,640"
    assert shown["openai"]["exact_cost"] == "0.0185000000" and shown["openai"]["cost"] == "$0.0185"

    assert page.locator("svg.usage-chart").count() == 3
    for chart in page.locator("svg.usage-chart").all():
        assert chart.bounding_box()["height"] > 100
    gpt_row = page.locator("#limits-table tr", has_text="GPT Main")
    assert "1,500 / 50,000" in gpt_row.inner_text()
    gemini_row = page.locator("#limits-table tr", has_text="Gemini Fast")
    assert "16,200 / 20,000" in gemini_row.inner_text() and gemini_row.locator("td.limit-warn").count() == 1
    # Everything the page needed came from the gateway itself.
    assert requested_hosts == {urlsplit(live_server.url).netloc}

    save_screenshot(page, "usage-dashboard")
