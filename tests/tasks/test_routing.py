"""Routing: fallback on every retriable failure and none on a bad request, priority and the A/B split, cooldowns,
token limits (including a race on PostgreSQL), the environment fallback, and invalid structured output."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import uuid
from collections import Counter
from datetime import timedelta
from types import SimpleNamespace

import httpx2
import pytest
from django.db import connection
from django.utils import timezone

from providers.fake.generation import json_text, text_tokens
from providers.fake.schema_instance import invalid_instance_from_schema
from tasks import prompts
from tasks.schemas import JOB_POSTING
from tasks.selectors import weighted_order
from tests.tasks.conftest import COVER_LETTER, CV_DRAFT, EXTRACT, acall, call, db_with_threads, sse_events, usage_rows

pytestmark = db_with_threads

LETTER = {"profile": "Ada Lovelace, Python developer.", "job": "Backend engineer at Acme."}
POSTING = {"text": "Python developer at Acme, Berlin. Full time."}


def provider_requests(monkeypatch, url: str) -> list[str]:
    """Record the model of every request the provider SDKs send to `url` (through httpx2, sync or async)."""
    sent: list[str] = []

    def note(request) -> None:
        if str(request.url) == url:
            sent.append(json.loads(request.content)["model"])

    original_send, original_async_send = httpx2.Client.send, httpx2.AsyncClient.send

    def send(self, request, *args, **kwargs):
        note(request)
        return original_send(self, request, *args, **kwargs)

    async def async_send(self, request, *args, **kwargs):
        note(request)
        return await original_async_send(self, request, *args, **kwargs)

    monkeypatch.setattr(httpx2.Client, "send", send)
    monkeypatch.setattr(httpx2.AsyncClient, "send", async_send)
    return sent


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


FAILURES = [
    pytest.param("openai", {"key_suffix": "~fail=429"}, "rate_limited", id="openai-429"),
    pytest.param("openai", {"key_suffix": "~fail=500"}, "unavailable", id="openai-500"),
    pytest.param("gemini", {"key_suffix": "~fail=503"}, "unavailable", id="gemini-503"),
    pytest.param("claude", {"key_suffix": "~fail=529"}, "unavailable", id="claude-529-overloaded"),
    pytest.param("claude", {"key_suffix": "~fail=malformed"}, "malformed_response", id="claude-malformed"),
    pytest.param("openai", {"key_suffix": "~fail=timeout", "request_timeout_seconds": 1}, "timeout", id="timeout"),
    pytest.param("openai", {"base_url": closed_port_url()}, "unreachable", id="connection-refused"),
    pytest.param("openai", {"key": "sk-invalid-key-0001"}, "authentication", id="openai-bad-key"),
    pytest.param("claude", {"key": "sk-ant-revoked-0001"}, "authentication", id="claude-revoked-key"),
    pytest.param("gemini", {"key": "AIzaInvalid-0001"}, "authentication", id="gemini-bad-key"),
    pytest.param("openai", {"key": "sk-noperm-0001"}, "permission", id="openai-no-permission"),
]


@pytest.mark.parametrize(("provider", "failing", "error_type"), FAILURES)
def test_a_retriable_failure_falls_back_to_the_next_candidate(provider, failing, error_type, task_config, auth):
    first = task_config(provider, priority=1, **failing)
    second = task_config("claude", priority=2)

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["attempts"] == 2
    assert body["provider"]["config_id"] == second.pk
    failed, served = usage_rows(request_id=body["request_id"])
    assert (failed.attempt, failed.provider_config_id, failed.outcome, failed.error_type) == (
        1,
        first.pk,
        "error",
        error_type,
    )
    assert (failed.input_tokens, failed.output_tokens, failed.priced, failed.cost_usd) == (0, 0, True, 0)
    assert (served.attempt, served.provider_config_id, served.outcome) == (2, second.pk, "success")
    assert "sk-" not in response.content.decode() and "AIza" not in response.content.decode()


BAD_REQUESTS = [
    # Each provider's invalid-request error (`fail=400`): 400 invalid_request_error / INVALID_ARGUMENT.
    pytest.param("openai", {"key_suffix": "~fail=400"}, id="openai-400"),
    pytest.param("claude", {"key_suffix": "~fail=400"}, id="claude-400"),
    pytest.param("gemini", {"key_suffix": "~fail=400"}, id="gemini-400"),
    # The fake OpenAI's own 400 invalid_request_error to a request without a model.
    pytest.param("openai", {"model_name": ""}, id="openai-no-model"),
]


@pytest.mark.parametrize(("provider", "bad"), BAD_REQUESTS)
def test_a_bad_request_is_not_retried_elsewhere(provider, bad, task_config, auth):
    first = task_config(provider, priority=1, **bad)
    second = task_config("claude", priority=2)

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 422
    body = response.json()
    assert body["error"]["type"] == "provider_rejected_request"
    assert body["error"]["error_type"] == "bad_request"
    assert "No other provider was tried" in body["error"]["message"]
    assert body["attempts"] == 1
    [row] = usage_rows()
    assert (row.provider_config_id, row.outcome, row.error_type) == (first.pk, "error", "bad_request")
    assert not usage_rows(provider_config=second)


def test_when_every_candidate_fails_the_answer_is_a_502_naming_the_last_error(task_config, auth):
    task_config("openai", priority=1, key_suffix="~fail=500")
    task_config("gemini", priority=2, key_suffix="~fail=429")

    response = call(CV_DRAFT, LETTER, headers=auth)

    assert response.status_code == 502
    body = response.json()
    assert body["error"]["type"] == "providers_failed"
    assert body["error"]["last_error_type"] == "rate_limited"
    assert "gemini 2" in body["error"]["message"] and "2 attempt(s)" in body["error"]["message"]
    assert body["attempts"] == 2
    assert [row.error_type for row in usage_rows()] == ["unavailable", "rate_limited"]


def test_when_every_candidate_times_out_the_answer_is_a_504(task_config, auth):
    task_config("openai", key_suffix="~fail=timeout", request_timeout_seconds=1)

    response = call(CV_DRAFT, LETTER, headers=auth)

    assert response.status_code == 504
    assert response.json()["error"]["type"] == "providers_timed_out"
    assert [row.error_type for row in usage_rows()] == ["timeout"]


def test_a_stream_falls_back_before_its_first_byte(task_config, auth):
    first = task_config("gemini", priority=1, key_suffix="~fail=503")
    second = task_config("openai", priority=2)

    response = call(COVER_LETTER, {**LETTER, "stream": True}, headers=auth)

    assert response.status_code == 200
    events = sse_events(response.body)
    assert events[-1][0] == "done"
    assert events[-1][1]["provider"]["config_id"] == second.pk and events[-1][1]["attempts"] == 2
    failed, served = usage_rows()
    assert (failed.provider_config_id, failed.error_type, failed.streamed) == (first.pk, "unavailable", True)
    assert (served.provider_config_id, served.outcome, served.streamed) == (second.pk, "success", True)


@pytest.mark.parametrize("provider", ["openai", "claude", "gemini"])
def test_a_stream_that_breaks_after_deltas_ends_with_an_error_event(provider, task_config, auth):
    broken = task_config(provider, priority=1, key_suffix="~fail=midstream")
    task_config("openai", priority=2)  # never tried: text has already gone out

    response = call(CV_DRAFT, {**LETTER, "stream": True}, headers=auth)

    assert response.status_code == 200
    events = sse_events(response.body)
    names = [name for name, _ in events]
    assert names[0] == "delta" and names[-1] == "error" and "done" not in names
    error = events[-1][1]
    assert error["error"]["type"] == "provider_failed" and error["attempts"] == 1
    [row] = usage_rows()
    assert (row.provider_config_id, row.outcome, row.streamed) == (broken.pk, "error", True)
    # What was consumed before the break is recorded (the output estimated from the text passed on).
    assert row.input_tokens > 0 and row.output_tokens > 0


def test_a_stream_with_no_candidate_left_answers_json_not_events(task_config, auth):
    task_config("openai", key_suffix="~fail=429")

    response = call(COVER_LETTER, {**LETTER, "stream": True}, headers=auth)

    assert response.status_code == 502
    assert response["Content-Type"] == "application/json"


def test_lower_priority_numbers_are_tried_first(task_config, auth):
    task_config("claude", priority=50, weight=100)
    first = task_config("gemini", priority=10, weight=1)

    for _ in range(5):
        assert call(CV_DRAFT, LETTER, headers=auth).json()["provider"]["config_id"] == first.pk


def test_weighted_order_splits_first_places_by_weight():
    configs = [SimpleNamespace(priority=1, weight=w, name=n) for n, w in (("a", 1), ("b", 3), ("c", 6))]
    configs.append(SimpleNamespace(priority=0, weight=1, name="first"))
    rng = random.Random(20240601)
    draws = 20_000
    orders = [weighted_order(configs, rng) for _ in range(draws)]

    assert all(order[0].name == "first" for order in orders)  # priority first, whatever the weights
    second_place = Counter(order[1].name for order in orders)
    for name, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        # Binomial standard deviation <= 0.0035 at 20000 draws; 0.02 is more than five of them.
        assert abs(second_place[name] / draws - share) < 0.02
    # The rest of the order is a weighted draw without replacement: b follows a 3/(3+6) of the time a leads.
    after_a = Counter(order[2].name for order in orders if order[1].name == "a")
    assert abs(after_a["b"] / sum(after_a.values()) - 1 / 3) < 0.05


def test_equal_priorities_split_traffic_by_weight(task_config, auth):
    heavy = task_config("openai", priority=5, weight=3)
    light = task_config("gemini", priority=5, weight=1)

    async def many(n: int) -> list:
        # One after the other: SQLite's in-memory test database refuses concurrent writers.
        return [(await acall(CV_DRAFT, LETTER, headers=auth)).json()["provider"]["config_id"] for _ in range(n)]

    served = Counter(asyncio.run(many(160)))

    assert served[heavy.pk] + served[light.pk] == 160
    # Expected 120 / 40; the binomial standard deviation is 5.5, so +-25 will not flake.
    assert abs(served[heavy.pk] - 120) <= 25


def test_a_config_that_keeps_failing_cools_down_and_is_skipped(task_config, auth, settings):
    settings.PROVIDER_COOLDOWN_FAILURES = 2
    settings.PROVIDER_COOLDOWN_SECONDS = 60
    failing = task_config("openai", priority=1, key_suffix="~fail=500")
    healthy = task_config("gemini", priority=2)

    for _ in range(2):
        assert call(CV_DRAFT, LETTER, headers=auth).json()["attempts"] == 2
    response = call(CV_DRAFT, LETTER, headers=auth)

    assert response.json()["attempts"] == 1
    assert response.json()["provider"]["config_id"] == healthy.pk
    assert len(usage_rows(provider_config=failing)) == 2
    failing.cooldown.refresh_from_db()
    assert failing.cooldown.cooling_down()


def test_when_every_config_cools_down_the_answer_is_a_503_with_retry_after(task_config, auth, settings):
    settings.PROVIDER_COOLDOWN_FAILURES = 1
    settings.PROVIDER_COOLDOWN_SECONDS = 120
    task_config("openai", key_suffix="~fail=503")
    assert call(CV_DRAFT, LETTER, headers=auth).status_code == 502

    response = call(CV_DRAFT, LETTER, headers=auth)

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "providers_cooling_down"
    assert 100 < int(response["Retry-After"]) <= 120
    assert len(usage_rows()) == 1


def test_a_config_over_its_limit_is_skipped(task_config, auth):
    limited = task_config("openai", priority=1, daily_token_limit=10)
    other = task_config("claude", priority=2)

    response = call(CV_DRAFT, LETTER, headers=auth)

    assert response.status_code == 200
    assert response.json()["provider"]["config_id"] == other.pk
    assert response.json()["attempts"] == 1
    assert not usage_rows(provider_config=limited)


def test_when_every_config_is_over_its_limit_the_answer_is_a_429_with_the_reset(task_config, auth, settings):
    task_config("openai", daily_token_limit=10)
    task_config("gemini", monthly_token_limit=20)

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == "token_limit_reached"
    assert "over its token limit" in error["message"] and "daily" in error["message"] and "monthly" in error["message"]
    # The daily window resets first: the next local midnight.
    tomorrow = timezone.localdate() + timedelta(days=1)
    assert error["resets_at"].startswith(tomorrow.isoformat()) or settings.TIME_ZONE != "UTC"
    assert 0 < int(response["Retry-After"]) <= 24 * 3600
    assert usage_rows() == []


def test_a_limit_held_only_by_calls_in_flight_answers_429_with_a_retry_in_seconds(task_config, auth):
    from usage.services import IN_FLIGHT_RETRY_SECONDS, tokens_reserve

    config = task_config("openai", daily_token_limit=6_000)
    tokens_reserve(config=config, tokens=4_000)  # another call in flight holds most of the window

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 429
    error = response.json()["error"]
    assert "held by calls in flight" in error["message"] and "try again in a few seconds" in error["message"]
    assert 0 < int(response["Retry-After"]) <= IN_FLIGHT_RETRY_SECONDS
    assert usage_rows() == []


def test_limits_are_settled_to_the_actual_usage(task_config, auth):
    from usage.models import TokenCounter

    config = task_config("openai", daily_token_limit=100_000)
    body = call(CV_DRAFT, LETTER, headers=auth).json()

    used = body["usage"]["input_tokens"] + body["usage"]["output_tokens"]
    counters = {counter.period: counter for counter in TokenCounter.objects.filter(provider_config=config)}
    assert (counters["day"].used, counters["day"].reserved) == (used, 0)
    assert (counters["month"].used, counters["month"].reserved) == (used, 0)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the race needs PostgreSQL's row locks")
@pytest.mark.parametrize("with_fallback", [False, True], ids=["alone", "with-fallback"])
def test_fifty_concurrent_calls_never_exceed_a_limit_that_admits_ten(with_fallback, task_config, auth, settings):
    from usage.models import TokenCounter

    settings.TASK_MAX_OUTPUT_TOKENS_COVER_LETTER = 100
    user_text = prompts.cover_letter_text(
        profile=LETTER["profile"], job=LETTER["job"], tone="professional", language="en"
    )
    # What tasks.selectors.estimate_tokens reserves: the prompt's UTF-8 bytes and the output cap.
    estimate = len((prompts.COVER_LETTER_SYSTEM + user_text).encode()) + 100
    limit = 10 * estimate + estimate // 2
    # Slow answers keep all ten reservations in flight while the other forty ask.
    limited = task_config("openai", priority=1, daily_token_limit=limit, key_suffix="~latency=700")
    fallback = task_config("gemini", priority=2) if with_fallback else None

    async def race():
        return await asyncio.gather(*(acall(COVER_LETTER, LETTER, headers=auth) for _ in range(50)))

    statuses = Counter()
    served = Counter()
    for response in asyncio.run(race()):
        statuses[response.status_code] += 1
        if response.status_code == 200:
            served[response.json()["provider"]["config_id"]] += 1

    assert served[limited.pk] == 10
    if with_fallback:
        assert statuses == {200: 50} and served[fallback.pk] == 40
    else:
        assert statuses == {200: 10, 429: 40}
    day = TokenCounter.objects.get(provider_config=limited, period="day")
    recorded = sum(row.input_tokens + row.output_tokens for row in usage_rows(provider_config=limited))
    assert day.used == recorded <= limit and day.reserved == 0


def test_the_environment_fallback_serves_a_task_no_config_serves(auth, settings, fake_providers, task_config):
    settings.GEMINI_API_KEY = "AIzaTest-environment-key"
    settings.GEMINI_BASE_URL = fake_providers.gemini_base_url
    settings.GEMINI_MODEL_FAST = "gemini-2.0-flash"
    settings.GEMINI_MODEL_QUALITY = "gemini-2.5-pro"
    task_config("openai", tasks=("cv_drafting",), is_active=True)
    task_config("openai", tasks=("extraction",), is_active=False)

    extracted = call(EXTRACT, POSTING, headers=auth)
    letter = call(COVER_LETTER, LETTER, headers=auth)

    for response, model in ((extracted, "gemini-2.0-flash"), (letter, "gemini-2.5-pro")):
        assert response.status_code == 200, response.content
        provider = response.json()["provider"]
        assert provider == {
            "type": "gemini",
            "config_id": None,
            "name": "environment fallback (GEMINI_API_KEY)",
            "model": model,
        }
    rows = usage_rows(provider_config__isnull=True)
    assert sorted((row.task, row.model, row.provider_type, row.outcome) for row in rows) == [
        ("cover_letter", "gemini-2.5-pro", "gemini", "success"),
        ("extraction", "gemini-2.0-flash", "gemini", "success"),
    ]
    assert "AIzaTest-environment-key" not in extracted.content.decode()
    # A task a config serves does not use it, even when that config fails.
    task_config("openai", tasks=("cv_drafting",), key_suffix="~fail=500", priority=0)


def test_the_environment_fallback_is_not_used_while_a_config_serves_the_task(
    auth, settings, fake_providers, task_config
):
    settings.GEMINI_API_KEY = "AIzaTest-environment-key"
    settings.GEMINI_BASE_URL = fake_providers.gemini_base_url
    task_config("openai", tasks=("cv_drafting",), key_suffix="~fail=500")

    response = call(CV_DRAFT, LETTER, headers=auth)

    assert response.status_code == 502
    assert usage_rows(provider_config__isnull=True) == []


def test_with_no_provider_at_all_the_answer_is_a_503_naming_the_task(auth, settings, task_config):
    settings.GEMINI_API_KEY = None
    task_config("openai", tasks=("cv_drafting",))

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "no_provider" and error["task"] == "extraction"
    assert "'extraction' (Job-posting extraction)" in error["message"]


def test_invalid_structured_output_is_retried_once_then_a_502(task_config, auth):
    config = task_config("openai", key_suffix="~output=invalid")

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 502
    body = response.json()
    assert body["error"]["type"] == "invalid_output"
    assert "title: fails 'type' of the job_posting schema" in body["error"]["message"]
    assert body["attempts"] == 2
    rows = usage_rows()
    assert [(row.attempt, row.provider_config_id, row.outcome) for row in rows] == [
        (1, config.pk, "invalid_output"),
        (2, config.pk, "invalid_output"),
    ]
    # Both are billed, at the fake's count of the request and of its invalid answer.
    user_text = prompts.extraction_text(text=POSTING["text"], source_url=None)
    input_tokens = text_tokens(prompts.EXTRACTION_SYSTEM) + text_tokens(user_text)
    output_tokens = text_tokens(json_text(invalid_instance_from_schema(JOB_POSTING.wire)))
    assert all((row.input_tokens, row.output_tokens) == (input_tokens, output_tokens) for row in rows)


def test_invalid_output_is_retried_on_the_next_candidate_when_there_is_one(task_config, auth):
    invalid = task_config("openai", priority=1, key_suffix="~output=invalid")
    valid = task_config("openai", priority=2)

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 200
    assert response.json()["provider"]["config_id"] == valid.pk and response.json()["attempts"] == 2
    assert [(row.provider_config_id, row.outcome) for row in usage_rows()] == [
        (invalid.pk, "invalid_output"),
        (valid.pk, "success"),
    ]


def test_invalid_output_is_retried_on_the_same_candidate_when_it_is_the_only_one(
    task_config, fake_providers, auth, monkeypatch
):
    # `invalid-once` is remembered per (key, schema) for the whole session: a key of this test's own.
    config = task_config("openai", key=f"sk-once-{uuid.uuid4().hex}~output=invalid-once")
    sent = provider_requests(monkeypatch, f"{fake_providers.openai_base_url}/chat/completions")

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 200
    assert response.json()["attempts"] == 2
    assert [(row.provider_config_id, row.outcome) for row in usage_rows()] == [
        (config.pk, "invalid_output"),
        (config.pk, "success"),
    ]
    assert sent == [config.model_name, config.model_name]  # exactly two calls reached the provider


def test_invalid_output_whose_retry_finds_no_candidate_is_still_a_502(task_config, auth):
    task_config("openai", priority=1, key_suffix="~output=invalid")
    task_config("openai", priority=2, daily_token_limit=10)  # the retry's candidate is over its limit

    response = call(EXTRACT, POSTING, headers=auth)

    assert response.status_code == 502
    assert response.json()["error"]["type"] == "invalid_output"
    assert [row.outcome for row in usage_rows()] == ["invalid_output"]
