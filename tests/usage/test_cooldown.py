import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.clients.base import TokenUsage
from providers.models import ProviderConfig
from usage.models import ProviderCooldown, UsageRecord
from usage.services import (
    attempt_record,
    configs_cooling_down,
    configs_with_cooldown,
    provider_failure_note,
    provider_success_note,
)

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def in_another_process(function, /, **kwargs):
    """Run `function` on a connection of its own, as another worker process would, and return its result."""
    results: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(function(**kwargs))
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    if errors:
        raise errors[0]
    return results[0]


@pytest.mark.django_db(transaction=True)
def test_failures_counted_by_different_processes_add_up_to_a_cooldown(provider_config):
    config = provider_config()

    assert in_another_process(provider_failure_note, config_id=config.pk, error_type="timeout", now=NOON) == 1
    assert in_another_process(provider_failure_note, config_id=config.pk, error_type="unavailable", now=NOON) == 2
    assert in_another_process(configs_cooling_down, config_ids=[config.pk], now=NOON) == set()
    assert in_another_process(provider_failure_note, config_id=config.pk, error_type="rate_limited", now=NOON) == 3

    assert configs_cooling_down(config_ids=[config.pk], now=NOON) == {config.pk}
    state = ProviderCooldown.objects.get(provider_config=config)
    assert state.until == NOON + timedelta(seconds=30)
    assert (state.consecutive_failures, state.last_error_type) == (3, "rate_limited")

    assert in_another_process(provider_success_note, config_id=config.pk) is True
    assert configs_cooling_down(config_ids=[config.pk], now=NOON) == set()
    state.refresh_from_db()
    assert (state.consecutive_failures, state.until) == (0, None)


def test_a_cooldown_ends_after_its_seconds(provider_config, settings):
    settings.PROVIDER_COOLDOWN_FAILURES = 2
    settings.PROVIDER_COOLDOWN_SECONDS = 45
    config = provider_config()

    provider_failure_note(config_id=config.pk, error_type="unreachable", now=NOON)
    provider_failure_note(config_id=config.pk, error_type="unreachable", now=NOON)

    assert configs_cooling_down(config_ids=[config.pk], now=NOON + timedelta(seconds=44)) == {config.pk}
    assert configs_cooling_down(config_ids=[config.pk], now=NOON + timedelta(seconds=45)) == set()


def test_a_failure_after_the_cooldown_starts_another_at_once(provider_config):
    config = provider_config()
    for _ in range(3):
        provider_failure_note(config_id=config.pk, error_type="timeout", now=NOON)
    probe = NOON + timedelta(seconds=31)

    provider_failure_note(config_id=config.pk, error_type="timeout", now=probe)

    assert configs_cooling_down(config_ids=[config.pk], now=probe) == {config.pk}


def test_a_bad_request_does_not_count_toward_a_cooldown(provider_config):
    config = provider_config()

    for _ in range(5):
        assert provider_failure_note(config_id=config.pk, error_type="bad_request", now=NOON) == 0

    assert not ProviderCooldown.objects.exists()


def test_a_failure_on_our_side_of_the_wire_never_counts_toward_a_cooldown(provider_config):
    config = provider_config()

    for _ in range(5):
        assert provider_failure_note(config_id=config.pk, error_type="local", now=NOON) == 0

    assert not ProviderCooldown.objects.exists()


def test_a_success_between_failures_starts_the_count_again(provider_config):
    config = provider_config()
    provider_failure_note(config_id=config.pk, error_type="timeout", now=NOON)
    provider_failure_note(config_id=config.pk, error_type="timeout", now=NOON)

    assert provider_success_note(config_id=config.pk) is True
    provider_failure_note(config_id=config.pk, error_type="timeout", now=NOON)

    assert configs_cooling_down(config_ids=[config.pk], now=NOON) == set()
    assert ProviderCooldown.objects.get().consecutive_failures == 1


def test_a_success_without_failures_writes_nothing(provider_config):
    config = provider_config()

    with CaptureQueriesContext(connection) as context:
        assert provider_success_note(config_id=config.pk) is False

    assert len(context.captured_queries) == 1
    assert (
        context.captured_queries[0]["sql"].startswith("UPDATE")
        and "consecutive_failures > 0" in (context.captured_queries[0]["sql"])
    )
    assert not ProviderCooldown.objects.exists()


def test_recorded_attempts_drive_the_cooldown(provider_config):
    config = provider_config()

    def attempt(outcome: str, error_type: str = "") -> None:
        attempt_record(
            reservation=None,
            request_id="r",
            user_id=None,
            task="extraction",
            config=config,
            provider_type="gemini",
            model="gemini-2.5-flash",
            attempt=1,
            outcome=outcome,
            error_type=error_type,
            usage=TokenUsage() if outcome == "error" else TokenUsage(10, 10),
            latency_ms=1,
            streamed=False,
            now=NOON,
        )

    attempt("error", "unavailable")
    attempt("error", "bad_request")  # the request's fault: not counted
    attempt("error", "local")  # ours, before anything was sent: not counted
    attempt("aborted")  # the client went away: says nothing about the provider
    attempt("error", "authentication")
    assert ProviderCooldown.objects.get().consecutive_failures == 2
    attempt("invalid_output")  # the provider answered
    assert ProviderCooldown.objects.get().consecutive_failures == 0
    for _ in range(3):
        attempt("error", "timeout")

    assert UsageRecord.objects.filter(error_type="local").count() == 1
    assert configs_cooling_down(config_ids=[config.pk], now=NOON) == {config.pk}


def test_the_router_reads_candidates_and_their_cooldown_in_one_query(provider_config):
    cooling, healthy, recovered = provider_config(), provider_config(), provider_config()
    for _ in range(3):
        provider_failure_note(config_id=cooling.pk, error_type="timeout", now=NOON)
    provider_failure_note(config_id=recovered.pk, error_type="timeout", now=NOON)

    with CaptureQueriesContext(connection) as context:
        flags = {
            config.pk: (config.cooling_down, config.known_failures)
            for config in configs_with_cooldown(ProviderConfig.objects.all(), now=NOON)
        }

    assert len(context.captured_queries) == 1
    assert flags == {cooling.pk: (True, 3), healthy.pk: (False, 0), recovered.pk: (False, 1)}
