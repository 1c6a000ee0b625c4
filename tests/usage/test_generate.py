"""manage.py generate_usage: realistic, costed, time-ordered synthetic rows, and rollups that match them."""

from collections import Counter
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from providers.clients.base import TokenUsage
from providers.models import TASK_FLAGS, ProviderConfig
from tests.usage.test_rollups import assert_rollups_match_the_rows
from usage.models import DailyRollup, UsageRecord
from usage.pricing import price_quote

pytestmark = pytest.mark.django_db


def generate(*args):
    out, err = StringIO(), StringIO()
    call_command("generate_usage", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def generated():
    started = timezone.now()
    out, err = generate("--rows", "3000", "--days", "10", "--configs", "8", "--users", "20", "--seed", "3")
    return started, out, err


def test_it_adds_the_rows_asked_for_within_the_range_in_time_order(generated):
    started, out, err = generated

    assert UsageRecord.objects.count() == 3000
    times = list(UsageRecord.objects.order_by("id").values_list("created_at", flat=True))
    assert times == sorted(times)
    assert started - timedelta(days=10, hours=1) <= times[0] and times[-1] <= started
    assert "Generated 3,000 usage rows over 10 days" in out and "rows/s" in out
    assert "3,000 / 3,000 rows" in err


def test_the_rollups_match_the_generated_rows(generated):
    assert DailyRollup.objects.exists()
    assert_rollups_match_the_rows()


def test_the_mix_is_realistic(generated):
    rows = UsageRecord.objects.all()
    outcomes = Counter(rows.values_list("outcome", flat=True))
    error_types = Counter(rows.filter(outcome="error").values_list("error_type", flat=True))
    tasks = Counter(rows.values_list("task", flat=True))

    assert 0.90 < outcomes["success"] / 3000 < 0.98
    assert {"error", "invalid_output", "aborted"} <= outcomes.keys()
    assert len(error_types) >= 4 and error_types.most_common(1)[0][0] == "rate_limited"
    assert tasks.most_common(1)[0][0] == "extraction" and len(tasks) == 4
    assert 0 < rows.filter(priced=False).count() < 600
    assert rows.filter(provider_config__isnull=True).exists()  # the environment fallback
    assert rows.filter(user__isnull=True).count() < 600 and rows.filter(user__isnull=False).exists()
    assert rows.filter(reasoning_tokens__gt=0).exists() and rows.filter(cache_write_tokens__gt=0).exists()
    assert len(set(rows.values_list("request_id", flat=True))) == 3000


def test_every_row_is_costed_as_the_gateway_would_cost_it(generated):
    for row in UsageRecord.objects.order_by("?")[:200]:
        usage = TokenUsage(
            row.input_tokens,
            row.output_tokens,
            row.cached_input_tokens,
            row.cache_write_tokens,
            row.reasoning_tokens,
        )
        quote = price_quote(provider_type=row.provider_type, model=row.model, usage=usage)
        assert (row.cost_usd, row.priced, row.price_source) == (quote.cost_usd, quote.priced, quote.source), row


def test_synthetic_configs_and_users_are_named_so_and_never_serve_or_sign_in(generated):
    configs = ProviderConfig.objects.all()
    users = get_user_model().objects.all()

    assert configs.count() == 8
    assert all(config.display_name.startswith("synthetic ") and not config.is_active for config in configs)
    assert not any(getattr(config, flag) for config in configs for flag in TASK_FLAGS.values())
    assert users.count() == 20
    assert all(user.username.startswith("synthetic-user-") and not user.has_usable_password() for user in users)


def test_a_second_run_adds_rows_and_reuses_the_configs_and_users(generated):
    generate("--rows", "500", "--days", "3", "--configs", "8", "--users", "20", "--seed", "4")

    assert UsageRecord.objects.count() == 3500
    assert (ProviderConfig.objects.count(), get_user_model().objects.count()) == (8, 20)
    assert_rollups_match_the_rows()


@pytest.mark.parametrize(
    "args",
    [
        ["--rows", "0"],
        ["--rows", "10", "--days", "0"],
        ["--rows", "10", "--configs", "0"],
        ["--rows", "10", "--batch", "0"],
    ],
)
def test_bad_arguments_are_refused(args):
    with pytest.raises(CommandError):
        generate(*args)

    assert not UsageRecord.objects.exists()
