"""manage.py prune_usage: old usage rows go, in batches; the statistics stay."""

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from providers.clients.base import TokenUsage
from usage import services
from usage.models import DailyRollup, DailyUserRollup, UsageRecord
from usage.services import attempt_record

pytestmark = pytest.mark.django_db

URL = "/api/v1/super-admin/providers/usage/stats"


@pytest.fixture(autouse=True)
def _no_opportunistic_sweep(monkeypatch):
    monkeypatch.setattr(services, "_next_sweep", float("inf"))


@pytest.fixture
def history(provider_config, ordinary_user):
    """Five calls 181 to 300 days old and four from the last 179 days, of two configs, one unpriced."""
    priced = provider_config(
        provider_type="openai",
        model_name="gpt-4o",
        input_price_per_million=Decimal("2.5"),
        output_price_per_million=Decimal("10"),
    )
    unpriced = provider_config(provider_type="gemini", model_name="gemini-exp-synthetic")
    now = timezone.now()
    ages = {"old": [181, 200, 250, 299, 300], "kept": [0, 30, 120, 179]}
    for group, days in ages.items():
        for n, age in enumerate(days):
            attempt_record(
                reservation=None,
                request_id=f"{group}-{n}",
                user_id=ordinary_user.pk if n % 2 else None,
                task="extraction" if n % 2 else "cover_letter",
                config=priced if n % 3 else unpriced,
                provider_type="openai" if n % 3 else "gemini",
                model="gpt-4o" if n % 3 else "gemini-exp-synthetic",
                attempt=1,
                outcome="success" if n != 2 else "error",
                error_type="" if n != 2 else "timeout",
                usage=TokenUsage(1000 * (n + 1), 100 * (n + 1)) if n != 2 else None,
                latency_ms=500 * (n + 1),
                streamed=False,
                now=now - timedelta(days=age, hours=1),
            )
    return ages


def stats(client, **params):
    response = client.get(URL, params)
    assert response.status_code == 200, response.content
    return response.json()


def prune(*args):
    out, err = StringIO(), StringIO()
    call_command("prune_usage", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_deletes_old_rows_in_batches_and_the_statistics_stay_the_same(history, superadmin_api_client):
    today = timezone.localdate()
    kept_range = {"start": (today - timedelta(days=178)).isoformat(), "end": today.isoformat()}
    whole_range = {"start": (today - timedelta(days=365)).isoformat(), "end": today.isoformat()}
    before = {
        "kept": stats(superadmin_api_client, **kept_range, group_by="provider,day"),
        "kept by user": stats(superadmin_api_client, **kept_range, group_by="user"),
        "whole": stats(superadmin_api_client, **whole_range, group_by="provider,task"),
    }
    rollup_rows = (DailyRollup.objects.count(), DailyUserRollup.objects.count())
    assert before["whole"]["totals"]["calls"] == 9 and before["kept"]["totals"]["calls"] < 9

    out, err = prune("--older-than", "180d", "--batch-size", "2")

    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == ["kept-0", "kept-1", "kept-2", "kept-3"]
    assert "Deleted 5 usage rows created before" in out and "in 3 batches" in out
    assert [line.split()[:3] for line in err.splitlines()] == [["2", "/", "5"], ["4", "/", "5"], ["5", "/", "5"]]
    assert (DailyRollup.objects.count(), DailyUserRollup.objects.count()) == rollup_rows
    after = {
        "kept": stats(superadmin_api_client, **kept_range, group_by="provider,day"),
        "kept by user": stats(superadmin_api_client, **kept_range, group_by="user"),
        "whole": stats(superadmin_api_client, **whole_range, group_by="provider,task"),
    }
    assert after == before


def test_a_dry_run_counts_and_deletes_nothing(history):
    out, err = prune("--older-than", "26w", "--dry-run")  # 182 days

    assert "Would delete 4 usage rows" in out and err == ""
    assert UsageRecord.objects.count() == 9


def test_nothing_old_enough_is_not_an_error(history):
    out, _ = prune("--older-than", "301d")

    assert "Deleted 0 usage rows" in out
    assert UsageRecord.objects.count() == 9


def test_hours_count_too(history):
    prune("--older-than", f"{179 * 24}h")

    assert UsageRecord.objects.count() == 3


@pytest.mark.parametrize("age", ["180", "180 days", "0d", "-5d", "1.5d", "d", "180m", ""])
def test_a_bad_age_is_refused_naming_the_format(history, age):
    with pytest.raises(CommandError, match=r"--older-than .*36h, 180d or 26w"):
        prune(f"--older-than={age}")

    assert UsageRecord.objects.count() == 9


def test_a_batch_size_below_one_is_refused(history):
    with pytest.raises(CommandError, match="--batch-size"):
        prune("--older-than", "180d", "--batch-size", "0")
