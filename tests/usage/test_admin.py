from datetime import UTC, datetime

import pytest
from django.test import Client

from providers.clients.base import TokenUsage
from usage.models import UsageRecord
from usage.services import attempt_record

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/usage/usagerecord/"


@pytest.fixture
def records(provider_config):
    config = provider_config(display_name="Gemini Fast")
    for attempt, (provider_type, outcome, task) in enumerate(
        [("gemini", "success", "extraction"), ("openai", "error", "cover_letter")], start=1
    ):
        attempt_record(
            reservation=None,
            request_id=f"req-{attempt}",
            user_id=None,
            task=task,
            config=config if provider_type == "gemini" else None,
            provider_type=provider_type,
            model="gemini-2.5-flash" if provider_type == "gemini" else "gpt-4o",
            attempt=attempt,
            outcome=outcome,
            error_type="timeout" if outcome == "error" else "",
            usage=TokenUsage(100, 20),
            latency_ms=10,
            streamed=False,
            now=datetime(2026, 11, 26, 12, attempt, tzinfo=UTC),
        )
    return UsageRecord.objects.order_by("attempt")


def test_the_usage_list_refuses_a_superuser_without_otp(superuser_without_otp, records):
    client = Client()
    client.force_login(superuser_without_otp)

    response = client.get(CHANGELIST)

    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_usage_list_shows_attempts_and_filters_them(superadmin_session_client, records):
    page = superadmin_session_client.get(CHANGELIST)
    assert page.status_code == 200
    assert "req-1" in page.content.decode() and "req-2" in page.content.decode()

    for query, shown, hidden in [
        ({"provider_type__exact": "openai"}, "req-2", "req-1"),
        ({"task__exact": "extraction"}, "req-1", "req-2"),
        ({"outcome__exact": "error"}, "req-2", "req-1"),
        ({"q": "req-1"}, "req-1", "req-2"),
    ]:
        content = superadmin_session_client.get(CHANGELIST, query).content.decode()
        assert shown in content and hidden not in content, query


def test_the_usage_list_is_read_only(superadmin_session_client, records):
    record = records.first()

    assert superadmin_session_client.get(f"{CHANGELIST}add/").status_code == 403
    assert superadmin_session_client.get(f"{CHANGELIST}{record.pk}/delete/").status_code == 403
    change = superadmin_session_client.post(f"{CHANGELIST}{record.pk}/change/", {"request_id": "tampered"})
    assert change.status_code == 403
    record.refresh_from_db()
    assert record.request_id == "req-1"
    detail = superadmin_session_client.get(f"{CHANGELIST}{record.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()


def test_the_usage_list_does_not_count_the_whole_table(
    superadmin_session_client, records, django_assert_max_num_queries
):
    with django_assert_max_num_queries(12) as context:
        superadmin_session_client.get(CHANGELIST, {"outcome__exact": "success"})

    counts = [query["sql"] for query in context.captured_queries if "COUNT(" in query["sql"].upper()]
    # Only the filtered count; with show_full_result_count off there is no count of the unfiltered table.
    assert len(counts) == 1 and "outcome" in counts[0]
