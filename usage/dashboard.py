"""The "Usage statistics" admin page: a table per provider, token use against limits, and charts, or the table as CSV.

Every number of the table and the charts comes from one `usage.selectors.usage_stats` call (the rollups, so
the page costs the same at ten thousand usage rows or ten million) and is regrouped in memory; the limit bars
read the token counters of all configs in one query. So the page makes the same few queries whatever the
range, the data or the number of configs, and shows what the stats API answers for the same range.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from providers.clients.base import PROVIDER_NAMES
from providers.models import ProviderConfig, Task
from providers.selectors import provider_config_names
from usage.charts import Series, line_chart, stacked_bar_chart
from usage.models import Period, TokenCounter, UsageRecord
from usage.selectors import DateRange, UsageGroup, UsageStats, usage_stats
from usage.windows import Windows, window_resets_at

RANGES = (7, 30, 90)
DEFAULT_DAYS = 30
CSV_COLUMNS = (
    "provider",
    "calls",
    "successes",
    "errors",
    "success_rate",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_calls",
    "avg_latency_ms",
    "p95_latency_ms",
)
CHART_TITLES = {
    "chart-cost": "Cost per day by provider (USD)",
    "chart-calls": "Calls and errors per day",
    "chart-latency": "Latency per day (ms)",
}
CENT = Decimal("0.01")
SHOWN_COST_PLACES = Decimal("0.0001")
# A limit bar turns amber, then red, as the window fills (the default budget-alert thresholds' first and last).
WARN_PERCENT, FULL_PERCENT = 80, 100


@dataclass(frozen=True)
class ProviderRow:
    """A line of the provider table, with its figures formatted for the page."""

    provider: str  # the provider type, as the stats API's `group_by=provider` keys it; "" for the totals
    name: str
    usage: UsageGroup
    records_url: str = ""  # the usage records behind the line: same range, filters and provider

    @property
    def calls(self) -> str:
        return format_count(self.usage.calls)

    @property
    def tokens(self) -> str:
        return format_count(self.usage.total_tokens)

    @property
    def tokens_detail(self) -> str:
        return f"{self.usage.input_tokens:,} in, {self.usage.output_tokens:,} out"

    @property
    def cost(self) -> str:
        return format_usd(self.usage.cost_usd)

    @property
    def cost_exact(self) -> str:
        """The cost as the stats API writes it: a plain decimal string to 1e-10 USD."""
        return f"{self.usage.cost_usd:f}"

    @property
    def success_rate(self) -> str:
        rate = self.usage.success_rate
        return "—" if rate is None else f"{Decimal(str(rate)) * 100:.2f}%"

    @property
    def errors_detail(self) -> str:
        """Failures by kind, e.g. "timeout: 2, rate limited: 1"; empty without any."""
        kinds = sorted(self.usage.errors_by_type.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{kind.replace('_', ' ')}: {count:,}" for kind, count in kinds if count)

    @property
    def avg_latency(self) -> str:
        average = self.usage.avg_latency_ms
        return "—" if average is None else f"{average:,.1f} ms"

    @property
    def p95_latency(self) -> str:
        p95 = self.usage.p95_latency_ms
        return "—" if p95 is None else f"{p95:,} ms"


@dataclass(frozen=True)
class WindowUse:
    """Tokens used (and held by calls in flight) in one window of one config, against its limit."""

    period: str
    used: int
    reserved: int
    limit: int | None
    resets_at: datetime

    @property
    def percent(self) -> int | None:
        if self.limit is None:
            return None
        return self.used * 100 // self.limit if self.limit else 100  # a limit of 0 stops every call

    @property
    def used_width(self) -> Decimal:
        """The share of the bar the used tokens fill, in percent (0-100, 2 places)."""
        return _bar_share(self.used, self.limit)

    @property
    def reserved_width(self) -> Decimal:
        return min(_bar_share(self.reserved, self.limit), Decimal(100) - self.used_width)

    @property
    def level(self) -> str:
        percent = self.percent
        if percent is None:
            return "unlimited"
        return "full" if percent >= FULL_PERCENT else "warn" if percent >= WARN_PERCENT else "ok"

    @property
    def text(self) -> str:
        limit = "∞" if self.limit is None else f"{self.limit:,}"
        return f"{self.used:,} / {limit}"


@dataclass(frozen=True)
class Chart:
    title: str
    svg: SafeString


@dataclass(frozen=True)
class ConfigLimits:
    config: ProviderConfig
    day: WindowUse
    month: WindowUse

    @property
    def windows(self) -> tuple[WindowUse, WindowUse]:
        return (self.day, self.month)

    @property
    def counted(self) -> bool:
        """Whether the counters count this config's tokens: only while it has a limit (usage.services)."""
        return self.day.limit is not None or self.month.limit is not None


# The view ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The page's task and config filters, as read from the query string (None: all)."""

    task: str | None = None
    config_id: int | None = None

    def query(self, **extra) -> str:
        """The query string of the page with these filters, plus `extra`."""
        params = {"task": self.task, "config": self.config_id, **extra}
        return urlencode({name: value for name, value in params.items() if value not in (None, "")})

    def records_params(self, period: DateRange) -> dict[str, str]:
        """The usage records admin's filters for the same range and filters (created_at in TIME_ZONE days)."""
        zone = timezone.get_default_timezone()
        start = datetime.combine(period.start, time.min, tzinfo=zone)
        end = datetime.combine(period.end + timedelta(days=1), time.min, tzinfo=zone)
        params = {"created_at__gte": str(start), "created_at__lt": str(end)}
        if self.task:
            params["task__exact"] = self.task
        if self.config_id:
            params["provider_config__id__exact"] = str(self.config_id)
        return params


def dashboard_view(request, *, model_admin):
    """Render the page, or with `?format=csv` the provider table as CSV. Needs view permission on usage records."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    days = _days(request)
    filters = _filters(request)
    period = DateRange.last(days=days)
    stats = usage_stats(period=period, group_by=["day", "provider"], task=filters.task, config_id=filters.config_id)
    records = reverse("admin:usage_usagerecord_changelist", current_app=model_admin.admin_site.name)
    records_params = filters.records_params(period)
    rows = [
        replace(row, records_url=f"{records}?{urlencode({**records_params, 'provider_type__exact': row.provider})}")
        for row in provider_rows(stats)
    ]
    if request.GET.get("format") == "csv":
        return table_csv(rows, period=period)

    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Usage statistics",
        "opts": UsageRecord._meta,
        "app_label": UsageRecord._meta.app_label,
        "days": days,
        "ranges": RANGES,
        "filters": filters,
        "range_queries": {choice: filters.query(days=choice) for choice in RANGES},
        "csv_query": filters.query(days=days, format="csv"),
        "task_choices": Task.choices,
        "config_choices": _config_choices(filters.config_id),
        "records_url": f"{records}?{urlencode(records_params)}",
        "records_today_base": f"{records}?{urlencode(Filters().records_params(DateRange.last(days=1)))}",
        "period": period,
        "time_zone": timezone.get_default_timezone_name(),
        "rows": rows,
        "totals": ProviderRow(provider="", name="All providers", usage=stats.totals),
        "limits": [item for item in config_limits() if filters.config_id in (None, item.config.pk)],
        "charts": charts(stats) if stats.totals.calls else [],
    }
    return TemplateResponse(request, "admin/usage/dashboard.html", context)


def _days(request) -> int:
    value = request.GET.get("days")
    if value is None:
        return DEFAULT_DAYS
    if value.isdigit() and int(value) in RANGES:
        return int(value)
    choices = ", ".join(map(str, RANGES))
    messages.warning(
        request, f"There is no {value[:20]!r}-day range; showing the last {DEFAULT_DAYS} days (choose {choices})."
    )
    return DEFAULT_DAYS


def _filters(request) -> Filters:
    """The task and config filters; an unknown value is ignored with a warning, as an unknown range is."""
    task = request.GET.get("task") or None
    if task is not None and task not in Task.values:
        messages.warning(request, f"There is no task {task[:40]!r}; showing every task ({', '.join(Task.values)}).")
        task = None
    config = request.GET.get("config") or None
    config_id = int(config) if config is not None and config.isdigit() else None
    if config is not None and config_id is None:
        messages.warning(request, f"{config[:20]!r} is not a configuration id; showing every configuration.")
    return Filters(task=task, config_id=config_id)


def _config_choices(selected: int | None) -> list[tuple[int, str]]:
    """Every config by name, and the selected one if it has been deleted (its history stays on the page)."""
    choices = list(ProviderConfig.objects.order_by("display_name").values_list("pk", "display_name"))
    if selected is not None and selected not in {pk for pk, _ in choices}:
        name = provider_config_names(ids=[selected]).get(selected, f"configuration {selected}")
        choices.append((selected, f"{name} (deleted)"))
    return choices


# What the page shows ----------------------------------------------------------------------------------------


def provider_rows(stats: UsageStats) -> list[ProviderRow]:
    """A row per provider type that had calls in the range, in the selectors' order."""
    return [
        ProviderRow(provider=group.key["provider"], name=provider_name(group.key["provider"]), usage=group)
        for group in stats.regroup(["provider"])
    ]


def provider_name(provider_type: str) -> str:
    return PROVIDER_NAMES.get(provider_type, provider_type)


def config_limits(*, now: datetime | None = None) -> list[ConfigLimits]:
    """Today's and this month's tokens of every config against its limits. Two queries, whatever the count.

    The same figures as `usage.services.usage_for_config`, which makes a query per config.
    """
    windows = Windows.at(now or timezone.now())
    configs = list(ProviderConfig.objects.order_by("-is_active", "priority", "display_name"))
    counters = {
        (counter.provider_config_id, counter.period): counter
        for counter in TokenCounter.objects.filter(
            provider_config__in=[config.pk for config in configs],
            period__in=[Period.DAY, Period.MONTH],
            window_start__in=[windows.day, windows.month],
        )
        # A day counter of the 1st would also match the month's start date; keep each period's own window.
        if counter.window_start == windows.start(counter.period)
    }

    def use(config: ProviderConfig, period: str, limit: int | None) -> WindowUse:
        counter = counters.get((config.pk, period))
        return WindowUse(
            period=period,
            used=counter.used if counter else 0,
            reserved=counter.reserved if counter else 0,
            limit=limit,
            resets_at=window_resets_at(period, windows.start(period)),
        )

    return [
        ConfigLimits(
            config=config,
            day=use(config, Period.DAY, config.daily_token_limit),
            month=use(config, Period.MONTH, config.monthly_token_limit),
        )
        for config in configs
    ]


def charts(stats: UsageStats) -> list[Chart]:
    """Cost per day by provider, calls and errors per day, latency per day: SVG, from `stats` without a query."""
    days = stats.days()
    labels = [f"{day:%b} {day.day}" for day in days]
    cost: dict[str, dict[date, Decimal]] = {}
    for group in stats.groups:
        cost.setdefault(group.key["provider"], {})[group.key["day"]] = group.cost_usd
    per_day = {group.key["day"]: group for group in stats.regroup(["day"])}
    empty = UsageGroup(key={})
    daily = [per_day.get(day, empty) for day in days]
    span = f"{days[0]:%Y-%m-%d} to {days[-1]:%Y-%m-%d}"
    svgs = [
        stacked_bar_chart(
            chart_id="chart-cost",
            title=CHART_TITLES["chart-cost"],
            description=f"Daily cost of the priced calls, stacked by provider, {span}.",
            x_labels=labels,
            series=[
                Series(provider_name(provider), [by_day.get(day, 0) for day in days])
                for provider, by_day in sorted(cost.items())  # the table's order
            ],
            value_format=format_usd,
        ),
        line_chart(
            chart_id="chart-calls",
            title=CHART_TITLES["chart-calls"],
            description=f"Provider calls per day, and those that did not succeed, {span}.",
            x_labels=labels,
            series=[Series("Calls", [g.calls for g in daily]), Series("Errors", [g.errors for g in daily])],
            value_format=format_count,
            whole=True,
        ),
        line_chart(
            chart_id="chart-latency",
            title=CHART_TITLES["chart-latency"],
            description=f"Average and 95th-percentile latency of the calls of each day, {span}; gaps: no calls.",
            x_labels=labels,
            series=[
                Series("Average", [g.avg_latency_ms for g in daily]),
                Series("95th percentile", [g.p95_latency_ms for g in daily], dashed=True),
            ],
            value_format=format_ms,
            whole=True,
        ),
    ]
    return [Chart(title=CHART_TITLES[svg_id], svg=svg) for svg_id, svg in zip(CHART_TITLES, svgs, strict=True)]


def table_csv(rows: Sequence[ProviderRow], *, period: DateRange) -> HttpResponse:
    """The provider table as CSV: exact figures, cost as a decimal string, a rate as a fraction."""
    filename = f"usage-by-provider-{period.start:%Y-%m-%d}-to-{period.end:%Y-%m-%d}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        usage = row.usage
        writer.writerow(
            [
                row.provider,
                usage.calls,
                usage.successes,
                usage.errors,
                _blank_if_none(usage.success_rate),
                usage.input_tokens,
                usage.output_tokens,
                usage.total_tokens,
                row.cost_exact,
                usage.unpriced_calls,
                _blank_if_none(usage.avg_latency_ms),
                _blank_if_none(usage.p95_latency_ms),
            ]
        )
    return response


# Formats the template and the charts share -----------------------------------------------------------------


def format_usd(value) -> str:
    """Dollars to cents, or to 4 places under a dollar so that the small costs of a test or a quiet day show."""
    value = Decimal(str(value)) if not isinstance(value, Decimal) else value
    places = CENT if value >= 1 or value == 0 else SHOWN_COST_PLACES
    return f"${value.quantize(places, rounding=ROUND_HALF_UP):,}"


def format_count(value) -> str:
    return f"{int(value):,}"


def format_ms(value) -> str:
    return f"{int(round(value)):,} ms"


def _bar_share(part: int, whole: int | None) -> Decimal:
    if whole is None:
        return Decimal(0)
    if whole == 0:
        return Decimal(100)  # a limit of 0: full from the start
    return min(Decimal(part * 100) / whole, Decimal(100)).quantize(CENT)


def _blank_if_none(value) -> object:
    return "" if value is None else value
