"""GET /api/v1/super-admin/providers/usage/stats: numbers checked by hand, parameters, and who may ask."""

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from providers.clients.base import TokenUsage
from usage import services
from usage.services import attempt_record

pytestmark = pytest.mark.django_db

URL = "/api/v1/super-admin/providers/usage/stats"
D1, D2 = "2026-11-20", "2026-11-21"
NO_ERRORS = {
    "authentication": 0,
    "permission": 0,
    "model_not_found": 0,
    "rate_limited": 0,
    "timeout": 0,
    "unavailable": 0,
    "unreachable": 0,
    "bad_request": 0,
    "malformed_response": 0,
    "local": 0,
    "invalid_output": 0,
    "aborted": 0,
    "unsettled": 0,
    "other": 0,
}


@pytest.fixture(autouse=True)
def _no_opportunistic_sweep(monkeypatch):
    monkeypatch.setattr(services, "_next_sweep", float("inf"))


def at(day: str, clock: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=UTC)


def record(*, when: datetime, config=None, provider_type=None, model=None, user=None, task="extraction", **fields):
    """Record one attempt through the service, as the gateway does."""
    arguments = {
        "reservation": None,
        "request_id": "req-stats",
        "user_id": user.pk if user else None,
        "task": task,
        "config": config,
        "provider_type": provider_type or config.provider_type,
        "model": model or config.model_name,
        "attempt": 1,
        "outcome": "success",
        "error_type": "",
        "usage": None,
        "latency_ms": 100,
        "streamed": False,
        "now": when,
        **fields,
    }
    return attempt_record(**arguments)


@pytest.fixture
def bruno(django_user_model):
    return django_user_model.objects.create_user("bruno", "bruno@example.com", "Quiet-Lantern-Orbit-73")


@pytest.fixture
def configs(provider_config):
    """OpenAI and Claude configs with price overrides (costs to check by hand), and an unpriced Gemini model."""
    return {
        "openai": provider_config(
            provider_type="openai",
            display_name="OpenAI main",
            model_name="gpt-4o",
            input_price_per_million=Decimal("2.5"),
            output_price_per_million=Decimal("10"),
        ),
        "claude": provider_config(
            provider_type="claude",
            display_name="Claude writer",
            model_name="claude-sonnet-4-5",
            input_price_per_million=Decimal("3"),
            output_price_per_million=Decimal("15"),
        ),
        "gemini": provider_config(provider_type="gemini", display_name="Gemini lab", model_name="gemini-exp-synthetic"),
    }


@pytest.fixture
def calls(configs, ordinary_user, bruno):
    """Eight attempts on 20 and 21 November, one the day before and one the day after.

    #  day config  user    task              outcome                 in    out   extra             latency cost
    1  D1  openai  olivia  extraction        success                 1000  200   100 cached        800     0.0045
    2  D1  openai  olivia  extraction        error rate_limited      0     0                       120     0
    3  D2  openai  -       cv_drafting       success                 3000  1500  500 reasoning     4200    0.0225
    4  D2  claude  bruno   cover_letter      success                 2000  700   300 cache writes  2500    0.0165
    5  D2  claude  olivia  cover_letter      error timeout           0     0                       60000   0
    6  D1  gemini  olivia  image_validation  success                 1500  50                      900     unpriced
    7  D2  gemini  -       image_validation  invalid_output          1400  60                      1100    unpriced
    8  D1  (env)   -       extraction        aborted (gemini-2.5-flash)  0  0                      300     0
    """
    openai, claude, gemini = configs["openai"], configs["claude"], configs["gemini"]
    olivia = ordinary_user
    record(when=at(D1, "10:00"), config=openai, user=olivia, usage=TokenUsage(1000, 200, cached_input_tokens=100),
           latency_ms=800)  # fmt: skip
    record(when=at(D1, "10:30"), config=openai, user=olivia, outcome="error", error_type="rate_limited",
           latency_ms=120)  # fmt: skip
    record(when=at(D2, "09:00"), config=openai, task="cv_drafting", usage=TokenUsage(3000, 1500, reasoning_tokens=500),
           latency_ms=4200)  # fmt: skip
    record(when=at(D2, "11:00"), config=claude, user=bruno, task="cover_letter",
           usage=TokenUsage(2000, 700, cache_write_tokens=300), latency_ms=2500)  # fmt: skip
    record(when=at(D2, "23:59:59"), config=claude, user=olivia, task="cover_letter", outcome="error",
           error_type="timeout", latency_ms=60000)  # fmt: skip
    record(when=at(D1, "00:00"), config=gemini, user=olivia, task="image_validation", usage=TokenUsage(1500, 50),
           latency_ms=900)  # fmt: skip
    record(when=at(D2, "12:00"), config=gemini, task="image_validation", outcome="invalid_output",
           usage=TokenUsage(1400, 60), latency_ms=1100)  # fmt: skip
    record(when=at(D1, "18:00"), provider_type="gemini", model="gemini-2.5-flash", outcome="aborted", latency_ms=300)
    # Outside 20-21 November by a second either side.
    record(when=at("2026-11-19", "23:59:59"), config=openai, user=olivia, usage=TokenUsage(5, 5), latency_ms=10)
    record(when=at("2026-11-22", "00:00"), config=openai, user=olivia, outcome="error", error_type="authentication")
    return configs


def get(client, **params):
    response = client.get(URL, params)
    assert response.status_code == 200, response.content
    return response.json()


def numbers(**overrides):
    """A group's numbers: zeros, with `overrides`."""
    values = {
        "calls": 0,
        "successes": 0,
        "errors": 0,
        "errors_by_type": dict(NO_ERRORS),
        "success_rate": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": "0.0000000000",
        "unpriced_calls": 0,
        "avg_latency_ms": None,
        "p95_latency_ms": None,
    }
    errors = overrides.pop("errors_by_type", {})
    values.update(overrides)
    values["errors_by_type"].update(errors)
    return values


# The numbers, by hand ------------------------------------------------------------------------------------------

ALL_EIGHT = numbers(
    calls=8,
    successes=4,
    errors=4,
    errors_by_type={"rate_limited": 1, "timeout": 1, "invalid_output": 1, "aborted": 1},
    success_rate=0.5,
    input_tokens=8900,
    output_tokens=2510,
    cached_input_tokens=100,
    cache_write_tokens=300,
    reasoning_tokens=500,
    cost_usd="0.0435000000",
    unpriced_calls=2,
    avg_latency_ms=8740.0,  # 69,920 / 8
    # Ranked 7.6th of 8: the 8th call (60,000 ms) is alone in the bucket (30,000, 60,000], so 30,000 + 0.6 x 30,000.
    p95_latency_ms=48000,
)


def test_the_totals_of_a_range_are_exact(superadmin_api_client, calls):
    body = get(superadmin_api_client, start=D1, end=D2)

    assert body["range"] == {"start": D1, "end": D2, "days": 2, "time_zone": "UTC"}
    assert body["filters"] == {"provider": None, "config": None, "task": None, "user": None, "model": None}
    assert body["group_by"] == [] and body["groups"] == []
    assert body["totals"] == ALL_EIGHT


def test_groups_by_provider_are_exact_and_add_up_to_the_totals(superadmin_api_client, calls):
    body = get(superadmin_api_client, start=D1, end=D2, group_by="provider")

    assert body["groups"] == [
        {
            "provider": "claude",
            **numbers(
                calls=2,
                successes=1,
                errors=1,
                errors_by_type={"timeout": 1},
                success_rate=0.5,
                input_tokens=2000,
                output_tokens=700,
                cache_write_tokens=300,
                cost_usd="0.0165000000",  # 2,000 x $3 + 700 x $15 per million
                avg_latency_ms=31250.0,
                p95_latency_ms=57000,  # rank 1.9: 30,000 + 0.9 x 30,000
            ),
        },
        {
            "provider": "gemini",
            **numbers(
                calls=3,
                successes=1,
                errors=2,
                errors_by_type={"invalid_output": 1, "aborted": 1},
                success_rate=0.3333,
                input_tokens=2900,
                output_tokens=110,
                unpriced_calls=2,  # the environment's gemini-2.5-flash is priced: $0 for no tokens
                avg_latency_ms=766.7,
                p95_latency_ms=1425,  # rank 2.85 in (1,000, 1,500]: 1,000 + 0.85 x 500
            ),
        },
        {
            "provider": "openai",
            **numbers(
                calls=3,
                successes=2,
                errors=1,
                errors_by_type={"rate_limited": 1},
                success_rate=0.6667,
                input_tokens=4000,
                output_tokens=1700,
                cached_input_tokens=100,
                reasoning_tokens=500,
                cost_usd="0.0270000000",  # 0.0045 + 0.0225
                avg_latency_ms=1706.7,
                p95_latency_ms=4850,  # rank 2.85 in (4,000, 5,000]
            ),
        },
    ]
    assert body["totals"] == ALL_EIGHT


def test_groups_by_config_name_each_config_and_the_environment_fallback(superadmin_api_client, calls):
    body = get(superadmin_api_client, start=D1, end=D2, group_by="config")

    rows = [(group["config"], group["calls"], group["cost_usd"]) for group in body["groups"]]
    openai, claude, gemini = calls["openai"], calls["claude"], calls["gemini"]
    assert rows == [
        (None, 1, "0.0000000000"),
        ({"id": openai.pk, "name": "OpenAI main"}, 3, "0.0270000000"),
        ({"id": claude.pk, "name": "Claude writer"}, 2, "0.0165000000"),
        ({"id": gemini.pk, "name": "Gemini lab"}, 2, "0.0000000000"),
    ]
    assert body["totals"] == ALL_EIGHT


def test_groups_by_user_and_day_read_the_same_numbers(superadmin_api_client, calls, ordinary_user, bruno):
    body = get(superadmin_api_client, start=D1, end=D2, group_by=["user", "day"])

    rows = [(group["user"], group["day"], group["calls"], group["successes"]) for group in body["groups"]]
    olivia = {"id": ordinary_user.pk, "username": "olivia"}
    assert rows == [
        (None, D1, 1, 0),
        (None, D2, 2, 1),
        (olivia, D1, 3, 2),
        (olivia, D2, 1, 0),
        ({"id": bruno.pk, "username": "bruno"}, D2, 1, 1),
    ]
    assert body["totals"] == ALL_EIGHT


def test_groups_by_day_task_and_model_together(superadmin_api_client, calls):
    body = get(superadmin_api_client, start=D1, end=D2, group_by="day,task,model")

    rows = [(g["day"], g["task"], g["model"], g["calls"], g["output_tokens"]) for g in body["groups"]]
    assert rows == [
        (D1, "extraction", "gemini-2.5-flash", 1, 0),
        (D1, "extraction", "gpt-4o", 2, 200),
        (D1, "image_validation", "gemini-exp-synthetic", 1, 50),
        (D2, "cover_letter", "claude-sonnet-4-5", 2, 700),
        (D2, "cv_drafting", "gpt-4o", 1, 1500),
        (D2, "image_validation", "gemini-exp-synthetic", 1, 60),
    ]


@pytest.mark.parametrize(
    ("params", "expected_calls", "expected_cost"),
    [
        ({"provider": "claude"}, 2, "0.0165000000"),
        ({"task": "extraction"}, 3, "0.0045000000"),
        ({"model": "gpt-4o"}, 3, "0.0270000000"),
        ({"user": "olivia"}, 4, "0.0045000000"),
        ({"user": "olivia", "provider": "openai", "task": "extraction"}, 2, "0.0045000000"),
    ],
)
def test_filters_narrow_the_totals(superadmin_api_client, calls, params, expected_calls, expected_cost):
    body = get(superadmin_api_client, start=D1, end=D2, **params)

    assert (body["totals"]["calls"], body["totals"]["cost_usd"]) == (expected_calls, expected_cost)


def test_a_user_and_a_config_may_be_given_by_id(superadmin_api_client, calls, ordinary_user):
    by_name = get(superadmin_api_client, start=D1, end=D2, user="olivia")
    by_id = get(superadmin_api_client, start=D1, end=D2, user=str(ordinary_user.pk))
    config = get(superadmin_api_client, start=D1, end=D2, config=calls["openai"].pk)

    assert by_name["totals"] == by_id["totals"]
    assert by_id["filters"]["user"] == ordinary_user.pk
    assert by_name["totals"]["errors_by_type"] == {**NO_ERRORS, "rate_limited": 1, "timeout": 1}
    assert (config["totals"]["calls"], config["filters"]["config"]) == (3, calls["openai"].pk)


def test_a_range_includes_both_whole_days_and_nothing_else(superadmin_api_client, calls):
    first = get(superadmin_api_client, start=D1, end=D1)["totals"]["calls"]
    wide = get(superadmin_api_client, start="2026-11-19", end="2026-11-22")["totals"]["calls"]

    assert (first, wide) == (4, 10)


def test_days_ends_today_and_defaults_to_30(superadmin_api_client, configs):
    today = timezone.localdate()
    for days_ago in (0, 29, 30):
        noon = datetime.combine(today - timedelta(days=days_ago), time(12), tzinfo=UTC)
        record(when=noon, config=configs["openai"], usage=TokenUsage(10, 10))

    default = get(superadmin_api_client)
    thirty_one = get(superadmin_api_client, days=31)

    assert default["range"] == {
        "start": (today - timedelta(days=29)).isoformat(),
        "end": today.isoformat(),
        "days": 30,
        "time_zone": "UTC",
    }
    assert (default["totals"]["calls"], thirty_one["totals"]["calls"]) == (2, 3)
    assert get(superadmin_api_client, days=1)["totals"]["calls"] == 1


def test_days_are_days_of_the_configured_time_zone(superadmin_api_client, configs, settings):
    # India is UTC+05:30: 18:15 UTC is 23:45 on the 20th there, 18:45 UTC is 00:15 on the 21st.
    settings.TIME_ZONE = "Asia/Kolkata"
    record(when=at(D1, "18:15"), config=configs["openai"], usage=TokenUsage(1, 0))
    record(when=at(D1, "18:45"), config=configs["openai"], usage=TokenUsage(2, 0))

    by_day = get(superadmin_api_client, start=D1, end=D2, group_by="day")
    by_user = get(superadmin_api_client, start=D1, end=D2, group_by="day,user")

    assert [(g["day"], g["input_tokens"]) for g in by_day["groups"]] == [(D1, 1), (D2, 2)]
    assert [(g["day"], g["input_tokens"]) for g in by_user["groups"]] == [(D1, 1), (D2, 2)]
    assert get(superadmin_api_client, start=D2, end=D2)["totals"]["input_tokens"] == 2
    assert by_day["range"]["time_zone"] == "Asia/Kolkata"


def test_an_empty_range_has_zero_totals_and_no_groups(superadmin_api_client, calls):
    body = get(superadmin_api_client, start="2025-01-01", end="2025-01-31", group_by="provider")

    assert body["groups"] == []
    assert body["totals"] == numbers()


def test_a_deleted_config_keeps_its_history_under_its_id(superadmin_api_client, calls):
    gemini = calls["gemini"]
    gemini_id = gemini.pk
    gemini.delete()

    body = get(superadmin_api_client, start=D1, end=D2, group_by="config")

    assert [g["calls"] for g in body["groups"] if g["config"] == {"id": gemini_id, "name": None}] == [2]
    assert body["totals"] == ALL_EIGHT


def test_statistics_read_the_rollups_never_the_usage_rows(superadmin_api_client, calls):
    with CaptureQueriesContext(connection) as context:
        for group_by in ["", "provider", "config,day", "user,task,model"]:
            get(superadmin_api_client, start=D1, end=D2, group_by=group_by)
        get(superadmin_api_client, start=D1, end=D2, user="olivia")

    sql = [query["sql"] for query in context.captured_queries]
    assert not [statement for statement in sql if "usage_usagerecord" in statement]
    assert len([statement for statement in sql if "usage_dailyrollup" in statement]) == 3
    assert len([statement for statement in sql if "usage_dailyuserrollup" in statement]) == 2


# Parameters ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"days": "0"}, "days"),
        ({"days": "366"}, "days"),
        ({"days": "a week"}, "days"),
        ({"days": "7", "start": D1, "end": D2}, "days"),
        ({"start": D1}, "end"),
        ({"end": D2}, "start"),
        ({"start": "20/11/2026", "end": D2}, "start"),
        ({"start": D2, "end": D1}, "start"),
        ({"start": "2025-01-01", "end": "2026-01-02"}, "end"),  # 367 days
        ({"provider": "mistral"}, "provider"),
        ({"config": "abc"}, "config"),
        ({"config": "0"}, "config"),
        ({"task": "poetry"}, "task"),
        ({"user": "nobody-by-this-name"}, "user"),
        ({"user": "\u00b2"}, "user"),  # a digit to str.isdigit(), not to int()
        ({"user": "\u0661\u0662"}, "user"),  # Arabic-Indic digits
        ({"user": str(2**63)}, "user"),  # no database id is this large
        ({"config": str(2**63)}, "config"),
        ({"group_by": "provider,week"}, "group_by"),
        ({"groupby": "provider"}, "groupby"),
        ({"provider": ["openai", "claude"]}, "provider"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(superadmin_api_client, params, named):
    response = superadmin_api_client.get(URL, params)

    assert response.status_code == 400, response.content
    assert named in response.json(), response.json()


def test_a_superscript_digit_in_the_query_string_is_a_400_naming_the_user(superadmin_api_client):
    response = superadmin_api_client.get(URL + "?user=%C2%B2")

    assert response.status_code == 400, response.content
    assert list(response.json()) == ["user"]


def test_the_longest_range_is_366_days(superadmin_api_client):
    response = superadmin_api_client.get(URL, {"start": "2024-01-01", "end": "2024-12-31"})

    assert response.status_code == 200
    assert response.json()["range"]["days"] == 366


def test_group_by_may_be_repeated_and_duplicates_count_once(superadmin_api_client, calls):
    body = get(superadmin_api_client, start=D1, end=D2, group_by=["task", "provider,task"])

    assert body["group_by"] == ["task", "provider"]
    assert sum(group["calls"] for group in body["groups"]) == 8


# Who may ask ---------------------------------------------------------------------------------------------------


def test_it_refuses_outsiders_and_admits_a_verified_superadmin(
    outsiders, superadmin_api_client, superadmin_session_client, calls
):
    for client, expected in outsiders:
        response = client.get(URL, {"start": D1, "end": D2})
        assert response.status_code == expected, (client, response.content)
        assert "totals" not in response.json()

    assert superadmin_api_client.get(URL, {"start": D1, "end": D2}).json()["totals"] == ALL_EIGHT
    assert superadmin_session_client.get(URL, {"start": D1, "end": D2}).json()["totals"] == ALL_EIGHT


def test_an_unverified_superuser_is_told_mfa_is_required(outsiders):
    _, _, (unverified_token, _), _ = outsiders
    response = unverified_token.get(URL)

    assert response.status_code == 403
    assert "MFA" in response.json()["detail"]
