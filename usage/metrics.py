"""Prometheus metrics: what each provider attempt cost and how it went, and each config's tokens against its limits.

Exposed at /metrics (see `metrics_view`), in the Prometheus text format. prometheus_client appends `_total` to
counters, so the names a scraper sees are:

    ai_provider_requests_total{provider,model,task,outcome}             counter, attempts
    ai_provider_tokens_used_total{provider,model,task,outcome,kind}     counter, tokens as billed; kind is input,
        output, cached_input, cache_write or reasoning (input includes cached_input and cache_write, output
        includes reasoning, so add only input and output for a total)
    ai_provider_cost_usd_total{provider,model,task,outcome}             counter, USD of priced attempts
    ai_provider_latency_ms_bucket / _sum / _count{provider,model,task,outcome,le}   histogram, milliseconds
    ai_provider_error_rate{provider,model,task}                         gauge, computed at scrape time
    ai_provider_config_tokens_used{config_id,config,provider,period}    gauge, this day's / month's tokens
    ai_provider_config_tokens_reserved{...}                             gauge, held by calls in flight
    ai_provider_config_token_limit{...}                                 gauge, for each limit that is set
    ai_provider_config_token_limit_ratio{...}                           gauge, used / limit (1 = at the limit)
    ai_task_responses_total{endpoint,status}                            counter, what the task endpoints answered
        (endpoint is the URL name, e.g. cover-letter-generate; "other" for a path that resolved to none)

`provider` is the provider type (openai, claude, gemini); `outcome` is success, error, aborted or
invalid_output. There is no user label, to keep the number of series small.

The counters and the histogram are counted in each process as attempts are recorded. Under several worker
processes prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) keeps them in files that /metrics
sums. The gauges are read from the database at scrape time instead, so they are the same whichever process
answers: a per-process gauge cannot be summed into a rate, and the token counters already live in the database.
"""

from __future__ import annotations

import hmac
import logging
import os
from datetime import timedelta
from functools import lru_cache
from ipaddress import ip_address, ip_network

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, FilteredRelation, Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from providers.models import ProviderConfig
from usage.models import Outcome, Period, UsageRecord
from usage.windows import Windows

logger = logging.getLogger(__name__)

ATTEMPT_LABELS = ("provider", "model", "task", "outcome")
TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cached_input": "cached_input_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
}
# Milliseconds. Provider calls take from a few hundred milliseconds to minutes.
LATENCY_BUCKETS_MS = (100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000, 120_000, 300_000)

REQUESTS = Counter("ai_provider_requests", "Provider attempts.", ATTEMPT_LABELS)
TOKENS = Counter("ai_provider_tokens_used", "Tokens billed, by kind.", (*ATTEMPT_LABELS, "kind"))
COST = Counter("ai_provider_cost_usd", "Cost in USD of the priced attempts.", ATTEMPT_LABELS)
LATENCY = Histogram(
    "ai_provider_latency_ms", "Provider attempt latency in milliseconds.", ATTEMPT_LABELS, buckets=LATENCY_BUCKETS_MS
)


# The task endpoints take a lean path (runtime.asgi) without django-prometheus' django_http_* metrics.
TASK_RESPONSES = Counter(
    "ai_task_responses", "Responses of the task endpoints, by endpoint and status.", ("endpoint", "status")
)


def task_response_observe(request, response: HttpResponse) -> None:
    """Count one response of a task endpoint."""
    match = getattr(request, "resolver_match", None)
    endpoint = match.url_name if match is not None and match.url_name else "other"
    TASK_RESPONSES.labels(endpoint, str(response.status_code)).inc()


def attempt_observe(record: UsageRecord) -> None:
    """Count one provider attempt: a few in-memory (or, in multiprocess mode, mmapped) increments, no I/O."""
    requests, tokens, cost, latency = _attempt_series(
        record.provider_type, record.model, record.task, str(record.outcome)
    )
    requests.inc()
    for field, series in tokens:
        series.inc(getattr(record, field))
    if record.cost_usd is not None:
        cost.inc(float(record.cost_usd))
    latency.observe(record.latency_ms)


@lru_cache(maxsize=4096)
def _attempt_series(*labels: str) -> tuple:
    """The series one attempt's labels count in. `labels()` takes a lock and builds the label tuple each time,
    eight times per attempt; the series of a label set never change, so they are looked up once (the set of
    label values is already bounded: provider, model, task, outcome)."""
    return (
        REQUESTS.labels(*labels),
        tuple((field, TOKENS.labels(*labels, kind)) for kind, field in TOKEN_KINDS.items()),
        COST.labels(*labels),
        LATENCY.labels(*labels),
    )


class DatabaseCollector:
    """Gauges read from the database at scrape time: two queries per scrape, whichever process answers."""

    def collect(self):
        try:
            yield from self._config_limits()
            yield from self._error_rates()
        except DatabaseError:
            # A scrape without these gauges (and with the process and request metrics) beats a failed scrape.
            logger.exception("metrics: could not read usage from the database")

    def _config_limits(self):
        windows = Windows.at(timezone.now())
        labels = ("config_id", "config", "provider", "period")
        used = GaugeMetricFamily("ai_provider_config_tokens_used", "Tokens used in the current window.", labels=labels)
        reserved = GaugeMetricFamily(
            "ai_provider_config_tokens_reserved", "Tokens held by calls in flight.", labels=labels
        )
        limit = GaugeMetricFamily("ai_provider_config_token_limit", "The window's token limit.", labels=labels)
        ratio = GaugeMetricFamily(
            "ai_provider_config_token_limit_ratio", "Tokens used over the limit (1 = at the limit).", labels=labels
        )
        # One query: each config with a limit, joined to its current day and month counters (if any yet).
        rows = (
            ProviderConfig.objects.filter(Q(daily_token_limit__isnull=False) | Q(monthly_token_limit__isnull=False))
            .annotate(
                day=FilteredRelation(
                    "token_counters",
                    condition=Q(token_counters__period=Period.DAY, token_counters__window_start=windows.day),
                ),
                month=FilteredRelation(
                    "token_counters",
                    condition=Q(token_counters__period=Period.MONTH, token_counters__window_start=windows.month),
                ),
            )
            .order_by("pk")
            .values_list(
                "pk",
                "display_name",
                "provider_type",
                "daily_token_limit",
                "monthly_token_limit",
                "day__used",
                "day__reserved",
                "month__used",
                "month__reserved",
            )
        )
        for pk, name, provider, daily, monthly, day_used, day_reserved, month_used, month_reserved in rows:
            for period, period_limit, period_used, period_reserved in (
                (Period.DAY, daily, day_used or 0, day_reserved or 0),
                (Period.MONTH, monthly, month_used or 0, month_reserved or 0),
            ):
                values = [str(pk), name, provider, str(period)]
                used.add_metric(values, period_used)
                reserved.add_metric(values, period_reserved)
                if period_limit is not None:
                    limit.add_metric(values, period_limit)
                    ratio.add_metric(values, period_used / period_limit if period_limit else float("inf"))
        yield from (used, reserved, limit, ratio)

    def _error_rates(self):
        window = settings.METRICS_ERROR_RATE_WINDOW_SECONDS
        rate = GaugeMetricFamily(
            "ai_provider_error_rate",
            f"Share of attempts with outcome error over the last {window} s, from the usage records; "
            "absent when there were none.",
            labels=("provider", "model", "task"),
        )
        # The (created_at, ...) index makes this a short range scan, however large the table.
        rows = (
            UsageRecord.objects.filter(created_at__gte=timezone.now() - timedelta(seconds=window))
            .values_list("provider_type", "model", "task")
            .annotate(attempts=Count("pk"), errors=Count("pk", filter=Q(outcome=Outcome.ERROR)))
            .order_by()
        )
        for provider, model, task, attempts, errors in rows:
            rate.add_metric([provider, model, task], errors / attempts)
        yield rate


class _Scrape:
    """What one scrape collects: the process's (or all processes') metrics, then the database gauges."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def scrape_registry() -> _Scrape:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every process's counters and histograms (ours and django-prometheus's), summed from their files.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return _Scrape(registry, DatabaseCollector())
    return _Scrape(REGISTRY, DatabaseCollector())


@lru_cache(maxsize=8)
def _networks(allowed: tuple[str, ...]):
    return tuple(ip_network(item, strict=False) for item in allowed if item != "*")


def _address_allowed(remote_addr: str) -> bool:
    allowed = tuple(settings.METRICS_ALLOWED_IPS)
    if "*" in allowed:
        return True
    try:
        address = ip_address(remote_addr)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(allowed))


def _token_valid(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    if not expected:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve the metrics to an allowed address bearing the token, when one is set; 403 or 401 to anyone else."""
    if not _address_allowed(request.META.get("REMOTE_ADDR", "")):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    if not _token_valid(request):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(scrape_registry()), content_type=content_type)
