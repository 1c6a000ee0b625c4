"""The admin as a super-admin sees it: aditus's names, one spelling of each provider, and lists that fit the screen."""

from decimal import Decimal

import pytest

from providers.clients.base import TokenUsage
from providers.models import ProviderConfig
from tests.browser.conftest import log_in, save_screenshot
from usage.services import attempt_record

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def configs(provider_config):
    gpt = provider_config(
        provider_type="openai",
        display_name="OpenAI GPT-4o mini (production)",
        model_name="gpt-4o-mini-2024-07-18",
        default_for_extraction=True,
        default_for_image_validation=True,
        default_for_cv_drafting=True,
        default_for_cover_letter=True,
        daily_token_limit=1_000_000,
        input_price_per_million=Decimal("0.15"),
        output_price_per_million=Decimal("0.60"),
    )
    claude = provider_config(
        provider_type="claude",
        display_name="Claude Sonnet (quality)",
        model_name="claude-sonnet-4-5-20250929",
        default_for_cv_drafting=True,
        default_for_cover_letter=True,
        priority=20,
        weight=3,
    )
    ProviderConfig.objects.filter(pk=claude.pk).update(last_test_ok=False, last_test_error="authentication: bad key")
    gemini = provider_config(provider_type="gemini", display_name="Gemini Fast", default_for_extraction=True)
    for number, (config, outcome, error) in enumerate(
        [(gpt, "success", ""), (claude, "error", "rate_limited"), (gemini, "success", ""), (gpt, "invalid_output", "")]
    ):
        attempt_record(
            reservation=None,
            request_id=f"3f1c9a7e5b2d4c8e9a0b1c2d3e4f5a6{number}",
            user_id=None,
            task="cover_letter",
            config=config,
            provider_type=config.provider_type,
            model=config.model_name,
            attempt=number % 2 + 1,
            outcome=outcome,
            error_type=error,
            usage=TokenUsage(123_456, 7_890) if outcome != "error" else None,
            latency_ms=12_345,
            streamed=bool(number % 2),
        )
    return gpt, claude, gemini


def overflow(page, selector: str) -> int:
    """How many pixels of the element's content are hidden to the right (0: it shows all without scrolling)."""
    return page.eval_on_selector(selector, "element => element.scrollWidth - element.clientWidth")


def visible_headers(page) -> list[str]:
    return page.eval_on_selector_all(
        "#result_list thead th",
        r"""headers => headers.filter(th => {
            const box = th.getBoundingClientRect();
            const results = document.querySelector('.results').getBoundingClientRect();
            return box.width > 0 && box.right <= results.right + 1;
        }).map(th => (th.querySelector('.text') || th).innerText.trim().replace(/\s+/g, ' '))""",
    )


def test_the_admin_says_aditus_and_authenticator_apps_and_has_no_dead_view_site_link(
    page, live_server, superadmin, superadmin_device
):
    log_in(page, live_server, superadmin, superadmin_device)

    assert page.title() == "Site administration | aditus"
    assert page.inner_text("#site-name") == "aditus administration"
    assert "Django" not in page.inner_text("#header")
    assert "AUTHENTICATOR APPS" in page.inner_text("#content-main")  # headings are upper-cased by the admin's CSS
    assert "OTP_TOTP" not in page.inner_text("body")
    assert page.locator("#user-tools a", has_text="View site").count() == 0
    save_screenshot(page, "admin-index")


def test_provider_types_are_spelt_one_way_in_lists_filters_and_forms(
    page, live_server, superadmin, superadmin_device, configs
):
    log_in(page, live_server, superadmin, superadmin_device)

    page.goto(f"{live_server.url}/admin/providers/providerconfig/")
    listing = page.inner_text("#changelist")
    for name in ("OpenAI", "Anthropic Claude", "Google Gemini"):
        assert name in page.inner_text("#result_list") and name in page.inner_text("#changelist-filter")
    assert "Openai" not in listing and "\nClaude\n" not in listing

    page.goto(f"{live_server.url}/admin/providers/providerconfig/add/")
    options = page.locator("#id_provider_type option").all_inner_texts()
    assert options[1:] == ["Google Gemini", "OpenAI", "Anthropic Claude"]

    page.goto(f"{live_server.url}/admin/usage/usagerecord/")
    assert "Anthropic Claude" in page.inner_text("#changelist-filter") and "Openai" not in page.content()

    page.goto(f"{live_server.url}/admin/usage/usagerecord/dashboard/?days=7")
    assert "Anthropic Claude" in page.inner_text("#provider-table")


@pytest.mark.parametrize("width", [1400, 1920])
def test_the_provider_list_shows_every_column_without_scrolling(
    page, live_server, superadmin, superadmin_device, configs, width
):
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, live_server, superadmin, superadmin_device)
    page.goto(f"{live_server.url}/admin/providers/providerconfig/")
    save_screenshot(page, f"admin-provider-list-{width}")

    assert overflow(page, ".results") <= 1, visible_headers(page)
    headers = visible_headers(page)
    for column in ("KEY", "LAST TEST", "PRIORITY / WEIGHT", "TOKENS TODAY / LIMIT"):
        assert column in headers


@pytest.mark.parametrize("width", [1400, 1920])
def test_the_usage_record_list_shows_tokens_cost_and_latency_without_scrolling(
    page, live_server, superadmin, superadmin_device, configs, width
):
    page.set_viewport_size({"width": width, "height": 900})
    log_in(page, live_server, superadmin, superadmin_device)
    page.goto(f"{live_server.url}/admin/usage/usagerecord/")
    save_screenshot(page, f"admin-usage-records-{width}")

    assert overflow(page, ".results") <= 1, visible_headers(page)
    headers = visible_headers(page)
    for column in ("TOKENS IN / OUT", "COST (USD)", "LATENCY"):
        assert column in headers
