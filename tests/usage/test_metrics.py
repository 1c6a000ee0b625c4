"""/metrics: provider metrics after recorded attempts, the database gauges, several processes, who may scrape."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from providers.clients.base import TokenUsage
from usage import services
from usage.services import attempt_record, tokens_reserve

pytestmark = pytest.mark.django_db

BASE_DIR = Path(django_settings.BASE_DIR)
TOKEN = "a-long-enough-metrics-token-0123"


@pytest.fixture(autouse=True)
def _no_opportunistic_sweep(monkeypatch):
    monkeypatch.setattr(services, "_next_sweep", float("inf"))


def scrape(client: Client | None = None, **headers) -> str:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    return response.content.decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted label pairs): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def record(config=None, *, provider_type="openai", model="gpt-4o", task="cover_letter", outcome="success", **kw):
    arguments = {
        "reservation": None,
        "request_id": "req-metrics",
        "user_id": None,
        "task": task,
        "config": config,
        "provider_type": provider_type,
        "model": model,
        "attempt": 1,
        "outcome": outcome,
        "error_type": "timeout" if outcome == "error" else "",
        "usage": TokenUsage(),
        "latency_ms": 100,
        "streamed": False,
        **kw,
    }
    return attempt_record(**arguments)


def test_recorded_attempts_are_counted_under_the_documented_names_and_labels(ordinary_user):
    attempt = {"provider": "openai", "model": "gpt-4o", "task": "cover_letter"}
    before = samples(scrape())

    priced = record(
        usage=TokenUsage(input_tokens=1_200, output_tokens=300, cached_input_tokens=200, reasoning_tokens=50),
        latency_ms=700,
        user_id=ordinary_user.pk,
    )
    record(outcome="error", latency_ms=30_000)
    record(model="llama-on-my-laptop", usage=TokenUsage(input_tokens=10, output_tokens=10), latency_ms=90)
    text = scrape()
    after = samples(text)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    success, error = {**attempt, "outcome": "success"}, {**attempt, "outcome": "error"}
    assert delta("ai_provider_requests_total", **success) == 1
    assert delta("ai_provider_requests_total", **error) == 1
    billed = {"input": 1_200, "output": 300, "cached_input": 200, "cache_write": 0, "reasoning": 50}
    for kind, tokens in billed.items():
        assert delta("ai_provider_tokens_used_total", **success, kind=kind) == tokens
    assert delta("ai_provider_cost_usd_total", **success) == pytest.approx(float(priced.cost_usd))
    assert priced.cost_usd == Decimal("0.0057500000")  # 1,000 x 2.5 + 200 x 1.25 + 300 x 10 per million
    assert delta("ai_provider_latency_ms_count", **success) == 1
    assert delta("ai_provider_latency_ms_sum", **success) == 700
    assert delta("ai_provider_latency_ms_bucket", **success, le="500.0") == 0
    assert delta("ai_provider_latency_ms_bucket", **success, le="1000.0") == 1
    assert delta("ai_provider_latency_ms_bucket", **error, le="20000.0") == 0
    assert delta("ai_provider_latency_ms_bucket", **error, le="30000.0") == 1
    # An unpriced model is counted but adds no cost: it is not free, its price is unknown.
    unpriced = {**attempt, "model": "llama-on-my-laptop", "outcome": "success"}
    assert delta("ai_provider_requests_total", **unpriced) == 1
    assert value(after, "ai_provider_cost_usd_total", **unpriced) == 0

    for line in [
        "# TYPE ai_provider_requests_total counter",
        "# TYPE ai_provider_tokens_used_total counter",
        "# TYPE ai_provider_cost_usd_total counter",
        "# TYPE ai_provider_latency_ms histogram",
        "# TYPE ai_provider_error_rate gauge",
    ]:
        assert line in text.splitlines()
    ours = [labels for name, labels in after if name.startswith("ai_provider_")]
    assert ours and not any(key == "user" for labels in ours for key, _ in labels)
    # django-prometheus's request metrics are there too.
    assert any(name == "django_http_requests_total_by_method_total" for name, _ in after)


def test_the_error_rate_is_the_share_of_errors_among_recent_attempts(settings):
    settings.METRICS_ERROR_RATE_WINDOW_SECONDS = 300
    now = timezone.now()
    for outcome in ["success", "success", "error", "invalid_output"]:
        record(task="extraction", outcome=outcome, now=now - timedelta(seconds=30))
    record(task="extraction", outcome="error", now=now - timedelta(minutes=10))  # outside the window
    record(task="cv_drafting", outcome="success", now=now)

    found = samples(scrape())

    assert value(found, "ai_provider_error_rate", provider="openai", model="gpt-4o", task="extraction") == 0.25
    assert value(found, "ai_provider_error_rate", provider="openai", model="gpt-4o", task="cv_drafting") == 0
    assert not any(name == "ai_provider_error_rate" and ("task", "cover_letter") in labels for name, labels in found)


def test_each_config_shows_its_tokens_against_its_limits_from_one_query(provider_config):
    capped = provider_config(display_name="Capped", daily_token_limit=1_000, monthly_token_limit=4_000)
    daily_only = provider_config(display_name="Daily Only", provider_type="openai", daily_token_limit=500)
    provider_config(display_name="Unlimited")
    reservation = tokens_reserve(config=capped, tokens=400)
    record(capped, reservation=reservation, usage=TokenUsage(input_tokens=250, output_tokens=50))
    tokens_reserve(config=capped, tokens=200)  # still in flight

    with CaptureQueriesContext(connection) as context:
        found = samples(scrape())

    # the configs with their counters, and the error rates
    assert len(context.captured_queries) == 2, [query["sql"] for query in context.captured_queries]
    capped_day = {"config_id": str(capped.pk), "config": "Capped", "provider": "gemini", "period": "day"}
    capped_month = {**capped_day, "period": "month"}
    assert value(found, "ai_provider_config_tokens_used", **capped_day) == 300
    assert value(found, "ai_provider_config_tokens_reserved", **capped_day) == 200
    assert value(found, "ai_provider_config_token_limit", **capped_day) == 1_000
    assert value(found, "ai_provider_config_token_limit_ratio", **capped_day) == pytest.approx(0.3)
    assert value(found, "ai_provider_config_token_limit", **capped_month) == 4_000
    assert value(found, "ai_provider_config_token_limit_ratio", **capped_month) == pytest.approx(0.075)
    only_day = {"config_id": str(daily_only.pk), "config": "Daily Only", "provider": "openai"}
    assert value(found, "ai_provider_config_token_limit", **only_day, period="day") == 500
    assert value(found, "ai_provider_config_tokens_used", **only_day, period="day") == 0  # no counter yet
    assert ("ai_provider_config_token_limit", tuple(sorted({**only_day, "period": "month"}.items()))) not in found
    assert not any(("config", "Unlimited") in labels for _, labels in found)


# Several processes.

RECORDER = """
import sys
from decimal import Decimal

import django

django.setup()
from usage.metrics import attempt_observe
from usage.models import UsageRecord

count, outcome, latency_ms = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for _ in range(count):
    attempt_observe(UsageRecord(
        provider_type="gemini", model="gemini-2.5-flash", task="extraction", outcome=outcome,
        input_tokens=10, output_tokens=5, cached_input_tokens=2, cost_usd=Decimal("0.001"), priced=True,
        latency_ms=latency_ms,
    ))
print("done", flush=True)
"""


def multiprocess_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "aditus.settings", "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def test_metrics_recorded_in_several_processes_are_summed(tmp_path, monkeypatch):
    env = multiprocess_env(tmp_path)
    runs = [(300, "success", 150), (200, "success", 150), (100, "error", 4_000)]
    workers = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", RECORDER, *map(str, run)], cwd=BASE_DIR, env=env, stdout=subprocess.PIPE
        )
        for run in runs
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    pids = {worker.pid for worker in workers}
    assert {int(path.stem.rsplit("_", 1)[1]) for path in tmp_path.glob("counter_*.db")} == pids

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    found = samples(scrape())

    labels = {"provider": "gemini", "model": "gemini-2.5-flash", "task": "extraction"}
    success, error = {**labels, "outcome": "success"}, {**labels, "outcome": "error"}
    assert value(found, "ai_provider_requests_total", **success) == 500
    assert value(found, "ai_provider_requests_total", **error) == 100
    assert value(found, "ai_provider_tokens_used_total", **success, kind="input") == 5_000
    assert value(found, "ai_provider_tokens_used_total", **error, kind="cached_input") == 200
    assert value(found, "ai_provider_cost_usd_total", **success) == pytest.approx(0.5)
    assert value(found, "ai_provider_latency_ms_count", **success) == 500
    assert value(found, "ai_provider_latency_ms_bucket", **success, le="250.0") == 500
    assert value(found, "ai_provider_latency_ms_bucket", **error, le="2000.0") == 0
    assert value(found, "ai_provider_latency_ms_bucket", **error, le="5000.0") == 100
    # Only the processes' files: none of this test process's own (in-memory) counts.
    assert value(found, "ai_provider_requests_total", provider="openai", model="gpt-4o", task="cover_letter") == 0


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_an_asgi_server_with_two_workers_counts_every_request_once(tmp_path, monkeypatch):
    port = free_port()
    server = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "uvicorn", "aditus.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "2", "--log-level", "warning"],
        cwd=BASE_DIR,
        env=multiprocess_env(tmp_path),
    )
    url = f"http://127.0.0.1:{port}/no-such-page"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(url)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "uvicorn did not start"
                time.sleep(0.2)
        sent = 1
        # Keep sending (concurrently, a connection each) until both workers have answered some.
        with ThreadPoolExecutor(max_workers=16) as pool:
            for _ in range(25):
                statuses = list(pool.map(get, [url] * 40))
                assert set(statuses) == {404}
                sent += len(statuses)
                if len(per_process_404s(tmp_path)) >= 2:
                    break
        per_process = per_process_404s(tmp_path)
        assert len(per_process) == 2 and sum(per_process.values()) == sent

        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        found = samples(scrape())
        assert value(found, "django_http_responses_total_by_status_total", status="404") == sent
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def per_process_404s(directory: Path) -> dict[int, float]:
    """The 404 responses each worker process has counted so far, from its own file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == "django_http_responses_total_by_status_total" and sample.labels["status"] == "404":
                    counts[int(path.stem.rsplit("_", 1)[1])] = sample.value
    return {pid: count for pid, count in counts.items() if count}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Who may scrape.


def test_an_address_outside_the_allow_list_is_refused(superadmin_session_client):
    for client in [Client(REMOTE_ADDR="203.0.113.9"), superadmin_session_client]:
        client.defaults["REMOTE_ADDR"] = "203.0.113.9"
        response = client.get("/metrics")
        assert response.status_code == 403 and b"ai_provider" not in response.content


@pytest.mark.parametrize(
    ("allowed", "address", "status"),
    [
        (["127.0.0.1", "::1"], "127.0.0.1", 200),
        (["127.0.0.1", "::1"], "::1", 200),
        (["127.0.0.1", "::1"], "::ffff:127.0.0.1", 200),
        (["127.0.0.1", "::1"], "127.0.0.2", 403),
        (["10.0.0.0/8"], "10.20.30.40", 200),
        (["10.0.0.0/8"], "127.0.0.1", 403),
        (["*"], "198.51.100.7", 200),
        ([], "127.0.0.1", 403),
    ],
)
def test_the_allow_list_takes_addresses_and_networks(settings, allowed, address, status):
    settings.METRICS_ALLOWED_IPS = allowed

    assert Client(REMOTE_ADDR=address).get("/metrics").status_code == status


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-wrong-token-0", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"],
)
def test_with_a_token_set_a_scraper_without_it_is_refused(settings, authorization):
    settings.METRICS_TOKEN = TOKEN
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}

    response = Client().get("/metrics", **headers)

    assert response.status_code == 401 and b"ai_provider" not in response.content
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'


def test_with_a_token_set_a_scraper_bearing_it_gets_the_metrics(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = ["*"]

    text = scrape(Client(REMOTE_ADDR="198.51.100.7"), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert "# TYPE ai_provider_requests_total counter" in text
    # Both checks apply: the right token from outside the allow-list is still refused.
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]
    refused = Client(REMOTE_ADDR="198.51.100.7").get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert refused.status_code == 403


def test_metrics_are_only_read(settings):
    assert Client().post("/metrics").status_code == 405


@pytest.mark.parametrize(
    ("variable", "bad", "message"),
    [
        ("METRICS_ALLOWED_IPS", "127.0.0.1,localhost", "METRICS_ALLOWED_IPS: 'localhost'"),
        ("METRICS_TOKEN", "short", "METRICS_TOKEN must be at least 16"),
        ("BUDGET_ALERT_THRESHOLDS", "80,ninety", "BUDGET_ALERT_THRESHOLDS must be whole percents"),
        ("ALERT_WEBHOOK_URL", "hooks.slack.com/x", "ALERT_WEBHOOK_URL must be an http(s) URL"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_the_variable(variable, bad, message):
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "aditus.settings", variable: bad},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0 and message in result.stderr
