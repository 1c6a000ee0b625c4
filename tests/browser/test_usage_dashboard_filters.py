"""The dashboard's filters in a real browser: choose a task and a config, then open the records behind a row."""

import pytest
from django.utils import timezone

from providers.clients.base import TokenUsage
from tests.browser.conftest import log_in, save_screenshot
from usage.services import attempt_record

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_superadmin_filters_the_dashboard_and_follows_a_row_to_its_records(
    page, live_server, superadmin, superadmin_device, provider_config
):
    gpt = provider_config(provider_type="openai", display_name="GPT Writer", model_name="gpt-4o")
    claude = provider_config(provider_type="claude", display_name="Claude Writer", model_name="claude-sonnet-4-5")
    for number, (config, task) in enumerate(
        [(gpt, "cover_letter"), (gpt, "cover_letter"), (gpt, "cv_drafting"), (claude, "cover_letter")]
    ):
        attempt_record(
            reservation=None,
            request_id=f"browser-filter-{number}",
            user_id=None,
            task=task,
            config=config,
            provider_type=config.provider_type,
            model=config.model_name,
            attempt=1,
            outcome="success",
            error_type="",
            usage=TokenUsage(1000, 100),
            latency_ms=300,
            streamed=False,
            now=timezone.now(),
        )

    log_in(page, live_server, superadmin, superadmin_device)
    page.goto(f"{live_server.url}/admin/usage/usagerecord/dashboard/")
    page.select_option("#filter-task", "cover_letter")
    page.select_option("#filter-config", str(gpt.pk))
    page.click("#usage-filters button[type=submit]")
    page.wait_for_url("**/dashboard/?*task=cover_letter*")
    save_screenshot(page, "usage-dashboard-filtered")

    rows = page.locator("#provider-table tbody tr")
    assert rows.count() == 1
    assert page.inner_text("#provider-table tbody tr [data-field=calls]") == "2"

    page.click("#provider-table tbody tr th a")
    page.wait_for_selector("#result_list")
    save_screenshot(page, "usage-records-from-dashboard")
    assert page.locator("#result_list tbody tr").count() == 2
    assert set(page.locator("#result_list td.field-task_short").all_inner_texts()) == {"letters"}
