"""The usage dashboard's task and config filters, and the link from each row to the usage records behind it."""

import re
from html import unescape

import pytest
from django.utils import timezone

from providers.clients.base import TokenUsage
from usage.services import attempt_record

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/usage/usagerecord/dashboard/"


@pytest.fixture
def calls(provider_config):
    """Today: GPT drafts 2 CVs and 1 letter, Claude writes 1 letter; Gemini extracted once 40 days ago."""
    gpt = provider_config(provider_type="openai", display_name="GPT", model_name="gpt-4o")
    claude = provider_config(provider_type="claude", display_name="Claude", model_name="claude-sonnet-4-5")
    gemini = provider_config(provider_type="gemini", display_name="Gemini")
    now = timezone.now()
    for number, (config, task, when) in enumerate(
        [
            (gpt, "cv_drafting", now),
            (gpt, "cv_drafting", now),
            (gpt, "cover_letter", now),
            (claude, "cover_letter", now),
            (gemini, "extraction", now - timezone.timedelta(days=40)),
        ]
    ):
        attempt_record(
            reservation=None,
            request_id=f"req-filter-{number}",
            user_id=None,
            task=task,
            config=config,
            provider_type=config.provider_type,
            model=config.model_name,
            attempt=1,
            outcome="success",
            error_type="",
            usage=TokenUsage(100, 10),
            latency_ms=200,
            streamed=False,
            now=when,
        )
    return {"gpt": gpt, "claude": claude, "gemini": gemini}


def provider_calls(html: str) -> dict[str, str]:
    """Calls per provider row of the table."""
    return dict(re.findall(r'<tr data-provider="(\w+)">.*?data-field="calls" data-value="(\d+)"', html, re.S))


def row_link(html: str, provider: str) -> str:
    match = re.search(rf'<tr data-provider="{provider}">\s*<th scope="row"><a href="([^"]+)"', html)
    return unescape(match.group(1))


def records_on(client, url: str) -> list[str]:
    response = client.get(url)
    assert response.status_code == 200
    return re.findall(r'title="(req-filter-\d)"', response.content.decode())


def test_the_task_filter_narrows_the_table(superadmin_session_client, calls):
    everything = superadmin_session_client.get(DASHBOARD).content.decode()
    letters = superadmin_session_client.get(DASHBOARD, {"task": "cover_letter"}).content.decode()

    assert provider_calls(everything) == {"openai": "3", "claude": "1"}
    assert provider_calls(letters) == {"openai": "1", "claude": "1"}
    assert '<option value="cover_letter" selected>' in letters


def test_the_config_filter_narrows_the_table_and_keeps_the_range(superadmin_session_client, calls):
    html = superadmin_session_client.get(DASHBOARD, {"config": calls["gpt"].pk, "days": 90}).content.decode()

    assert provider_calls(html) == {"openai": "3"}
    assert provider_calls(
        superadmin_session_client.get(DASHBOARD, {"config": calls["gemini"].pk, "days": 90}).content.decode()
    ) == {"gemini": "1"}
    assert f'href="?config={calls["gpt"].pk}&amp;days=7"' in html  # the range buttons keep the filter


def test_the_csv_export_honours_the_filters(superadmin_session_client, calls):
    response = superadmin_session_client.get(DASHBOARD, {"task": "cv_drafting", "format": "csv"})

    lines = response.content.decode().splitlines()
    assert len(lines) == 2 and lines[1].startswith("openai,2,")


def test_each_row_links_to_exactly_its_usage_records(superadmin_session_client, calls):
    html = superadmin_session_client.get(DASHBOARD, {"task": "cover_letter"}).content.decode()

    assert sorted(records_on(superadmin_session_client, row_link(html, "openai"))) == ["req-filter-2"]
    assert sorted(records_on(superadmin_session_client, row_link(html, "claude"))) == ["req-filter-3"]
    unfiltered = superadmin_session_client.get(DASHBOARD, {"days": 7}).content.decode()
    assert sorted(records_on(superadmin_session_client, row_link(unfiltered, "openai"))) == [
        "req-filter-0",
        "req-filter-1",
        "req-filter-2",
    ]


def test_a_deleted_config_can_still_be_chosen_by_its_name(superadmin_session_client, superadmin_api_client, calls):
    gemini = calls["gemini"].pk
    superadmin_api_client.delete(f"/api/v1/super-admin/providers/configs/{gemini}")

    html = superadmin_session_client.get(DASHBOARD, {"config": gemini, "days": 90}).content.decode()

    assert provider_calls(html) == {"gemini": "1"}
    assert f'<option value="{gemini}" selected>Gemini (deleted)</option>' in html


@pytest.mark.parametrize(
    ("params", "warning"),
    [
        ({"task": "poetry"}, "There is no task &#x27;poetry&#x27;; showing every task"),
        ({"config": "gpt"}, "&#x27;gpt&#x27; is not a configuration id; showing every configuration."),
    ],
)
def test_an_unknown_filter_value_is_ignored_with_a_warning(superadmin_session_client, calls, params, warning):
    html = superadmin_session_client.get(DASHBOARD, params).content.decode()

    assert warning in html
    assert provider_calls(html) == {"openai": "3", "claude": "1"}
