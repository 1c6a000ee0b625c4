"""Budget alerts: noted by the attempt that crosses a threshold, sent later by `manage.py run_alert_worker`.

Noting follows recording the attempt (`budget_crossings`, from what the settling statements of `usage.services`
return: the new total and the config's thresholds) and costs no query unless the attempt crossed a threshold; the
alert is then inserted just after the attempt's transaction (a process that died in between would lose that
alert, never duplicate it). Each counter UPDATE locks its row, so exactly one transaction sees `used` go from below
a threshold to at or above it; the unique constraint (with INSERT ... ON CONFLICT DO NOTHING) makes it once per
window regardless.

Sending never happens in the request. The worker claims due alerts one at a time with a conditional UPDATE, so
any number of workers can run; sends by email and to the webhook, each channel once; and on a failure retries
with exponential backoff, giving up after settings.ALERT_MAX_ATTEMPTS. Delivery is at least once: a worker that
dies between sending and marking the alert sent sends it again after ALERT_SEND_LEASE_SECONDS.

Compromise: an alert fires on the attempt that crosses the threshold. A limit lowered below what a window has
already used, or a threshold added below it, alerts from the next window on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import httpx2
from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F
from django.utils import timezone

from usage.models import AlertStatus, BudgetAlert, Period, thresholds_parse
from usage.windows import window_resets_at

if TYPE_CHECKING:
    from providers.models import ProviderConfig

logger = logging.getLogger(__name__)

_PERIOD_WORDS = {Period.DAY: "daily", Period.MONTH: "monthly"}


def _limit(config: ProviderConfig, period: str) -> int | None:
    return config.daily_token_limit if period == Period.DAY else config.monthly_token_limit


def thresholds_for(policy_thresholds: str | None) -> tuple[int, ...]:
    """Return the thresholds (percent) of a config's BudgetPolicy, or the settings' default when it has none."""
    if policy_thresholds is None:
        return tuple(settings.BUDGET_ALERT_THRESHOLDS)
    try:
        return thresholds_parse(policy_thresholds)
    except ValueError:
        # Validated on save; a value written around the validation must not fail the request that records usage.
        logger.error("budget policy thresholds %r are invalid; using the default", policy_thresholds)
        return tuple(settings.BUDGET_ALERT_THRESHOLDS)


def budget_crossings(
    *, config: ProviderConfig | None, counters: Iterable[tuple[str, date | str, int, str | None]], tokens: int
) -> list[BudgetAlert]:
    """The alerts for the thresholds that adding `tokens` took each counter across (not saved).

    `counters` are (period, window_start, used after the update, the config's policy thresholds or None) as the
    settling statements of `usage.services` return them. Each counter UPDATE locks its row, so exactly one
    transaction sees `used` go from below a threshold to at or above it.
    """
    if config is None or tokens <= 0:
        return []
    now = timezone.now()
    return [
        BudgetAlert(
            provider_config_id=config.pk,
            period=period,
            window_start=start,
            threshold=threshold,
            token_limit=limit,
            used=used,
            created_at=now,
            next_attempt_at=now,
        )
        for period, start, limit, used, thresholds in _windows(config, counters)
        for threshold in thresholds
        # Integer arithmetic: exactly one attempt moves `used` from below a threshold to at or above it.
        if (used - tokens) * 100 < threshold * limit <= used * 100
    ]


def budget_crossings_record(
    *, config: ProviderConfig | None, counters: Iterable[tuple[str, date | str, int, str | None]], tokens: int
) -> int:
    """Save `budget_crossings(...)`; return how many there were. The unique constraint makes a second crossing
    of the same threshold (there should be none) a no-op."""
    alerts = budget_crossings(config=config, counters=counters, tokens=tokens)
    if alerts:
        BudgetAlert.objects.bulk_create(alerts, ignore_conflicts=True)
        logger.info("budget alerts noted for config %s: %s", config.pk, [(a.period, a.threshold) for a in alerts])
    return len(alerts)


def _windows(config: ProviderConfig, counters):
    for period, window_start, used, policy_thresholds in counters:
        limit = _limit(config, period)
        if limit:  # no alerts without a limit, nor for a limit of 0 (nothing is ever allowed)
            start = date.fromisoformat(window_start) if isinstance(window_start, str) else window_start
            yield period, start, limit, used, thresholds_for(policy_thresholds)


@dataclass
class SendReport:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    skipped: int = 0

    def count(self, status: str) -> None:
        field = "retrying" if status == AlertStatus.PENDING else str(status)
        setattr(self, field, getattr(self, field) + 1)


def alerts_send_due(*, now: datetime | None = None, batch_size: int = 50) -> SendReport:
    """Claim and send every alert that is due; return what became of them.

    Safe to run in any number of processes at once: each alert is claimed by one conditional UPDATE that
    moves its next attempt a lease ahead, and only the worker whose UPDATE changed the row sends it.
    """
    report = SendReport()
    while True:
        moment = now or timezone.now()
        due = list(
            BudgetAlert.objects.filter(status=AlertStatus.PENDING, next_attempt_at__lte=moment)
            .order_by("next_attempt_at")
            .values_list("pk", "next_attempt_at")[:batch_size]
        )
        if not due:
            return report
        for pk, due_at in due:
            claimed = BudgetAlert.objects.filter(pk=pk, status=AlertStatus.PENDING, next_attempt_at=due_at).update(
                next_attempt_at=moment + timedelta(seconds=settings.ALERT_SEND_LEASE_SECONDS),
                attempts=F("attempts") + 1,
            )
            if claimed != 1:
                continue  # another worker has it
            alert = BudgetAlert.objects.select_related("provider_config").get(pk=pk)
            report.count(alert_deliver(alert, now=moment))


def alert_deliver(alert: BudgetAlert, *, now: datetime | None = None) -> str:
    """Send a claimed alert on each channel it has not reached yet, then record the outcome; return the status.

    A channel that fails is retried later (the other is not sent again); after ALERT_MAX_ATTEMPTS attempts the
    alert is given up. Errors are recorded without the webhook URL, which carries its secret.
    """
    now = now or timezone.now()
    subject, body = alert_message(alert)
    errors: list[str] = []
    channels = 0
    if settings.ALERT_EMAILS:
        channels += 1
        if alert.email_sent_at is None:
            try:
                send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, settings.ALERT_EMAILS, fail_silently=False)
                alert.email_sent_at = timezone.now()
            except Exception as error:  # any failure of a channel is retried, never a crash of the worker
                errors.append(f"email: {type(error).__name__}: {error}")
    if settings.ALERT_WEBHOOK_URL:
        channels += 1
        if alert.webhook_sent_at is None:
            error = _webhook_post(settings.ALERT_WEBHOOK_URL, f"{subject}\n{body}")
            if error:
                errors.append(f"webhook: {error}")
            else:
                alert.webhook_sent_at = timezone.now()

    if not channels:
        alert.status = AlertStatus.SKIPPED
    elif not errors:
        alert.status = AlertStatus.SENT
        alert.sent_at = timezone.now()
    elif alert.attempts >= settings.ALERT_MAX_ATTEMPTS:
        alert.status = AlertStatus.FAILED
    else:
        alert.next_attempt_at = now + alert_retry_delay(alert.attempts)
    alert.last_error = "; ".join(errors)[:500]
    alert.save(update_fields=["status", "next_attempt_at", "last_error", "email_sent_at", "webhook_sent_at", "sent_at"])
    log = logger.warning if errors else logger.info
    log("budget alert %s: %s after %d attempt(s) %s", alert.pk, alert.status, alert.attempts, alert.last_error)
    return alert.status


def alerts_requeue(*, alert_ids: list[int], now: datetime | None = None) -> int:
    """Queue alerts that gave up or had no channel for the worker again, from a fresh count; return how many."""
    return BudgetAlert.objects.filter(pk__in=alert_ids, status__in=[AlertStatus.FAILED, AlertStatus.SKIPPED]).update(
        status=AlertStatus.PENDING, attempts=0, next_attempt_at=now or timezone.now(), last_error=""
    )


def alert_retry_delay(attempts: int) -> timedelta:
    """Exponential backoff: ALERT_RETRY_BASE_SECONDS after the first attempt, doubling, capped."""
    seconds = settings.ALERT_RETRY_BASE_SECONDS * 2 ** min(max(attempts - 1, 0), 30)
    return timedelta(seconds=min(seconds, settings.ALERT_RETRY_MAX_SECONDS))


def _webhook_post(url: str, text: str) -> str:
    """POST Slack-compatible JSON; return an error description without the URL, or "" on success."""
    try:
        response = httpx2.post(
            url, json={"text": text}, timeout=settings.ALERT_WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False
        )
    except httpx2.HTTPError as error:
        return type(error).__name__ + (f": {error}".replace(url, "<webhook URL>") if str(error) else "")
    if not response.is_success:
        return f"HTTP {response.status_code}"
    return ""


def alert_message(alert: BudgetAlert) -> tuple[str, str]:
    """Return the subject and body that say which limit of which config crossed which threshold."""
    config = alert.provider_config
    limit_words = f"{_PERIOD_WORDS[alert.period]} token limit"
    subject = f"[aditus] {config.display_name}: {alert.threshold}% of its {limit_words} used"
    resets_at = timezone.localtime(window_resets_at(alert.period, alert.window_start))
    body = (
        f"{config.display_name} ({config.provider_type}, {config.model_name}) has used {alert.used:,} of its "
        f"{limit_words} of {alert.token_limit:,} tokens ({alert.percent_used}%) in the window that started on "
        f"{alert.window_start:%Y-%m-%d}, crossing the {alert.threshold}% alert threshold.\n"
        f"The window resets at {resets_at:%Y-%m-%d %H:%M %Z}. Calls that would go over the limit are refused "
        "for this config until then, and go to the next provider configured for the task, if there is one.\n"
    )
    return subject, body
