from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from providers.clients.base import ErrorType, provider_type_choices
from providers.models import ProviderConfig, Task


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    ERROR = "error", "Error"
    ABORTED = "aborted", "Aborted (client went away)"
    INVALID_OUTPUT = "invalid_output", "Invalid output"
    # A reservation that expired without being settled (its worker died mid-call): charged as reserved.
    UNSETTLED = "unsettled", "Unsettled (worker lost mid-call)"


class UsageRecord(models.Model):
    """One provider attempt: who asked, which provider answered, the tokens billed and what they cost.

    Prompts and outputs are never stored.
    """

    created_at = models.DateTimeField(default=timezone.now)
    request_id = models.CharField(max_length=64, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    task = models.CharField(max_length=32, choices=Task.choices)
    # NULL for the environment fallback, which has no config. Indexed by the (provider_config, created_at) index.
    provider_config = models.ForeignKey(
        ProviderConfig,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_records",
        db_index=False,
    )
    provider_type = models.CharField(max_length=16, choices=provider_type_choices)
    model = models.CharField(max_length=200, help_text="As the provider reported it, else as configured.")
    attempt = models.PositiveSmallIntegerField(default=1, help_text="1-based within a request.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error_type = models.CharField(
        max_length=32, blank=True, choices=[(e.value, e.value.replace("_", " ")) for e in ErrorType]
    )

    # As billed. input_tokens includes the cached and cache-write tokens; output_tokens includes reasoning.
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)

    cost_usd = models.DecimalField(
        "cost (USD)", max_digits=18, decimal_places=10, null=True, blank=True, help_text="Empty when unpriced."
    )
    priced = models.BooleanField(default=False)
    price_source = models.CharField(max_length=64, blank=True, help_text="e.g. genai-prices 0.2.3, or override.")
    latency_ms = models.PositiveIntegerField(default=0)
    streamed = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Leads with created_at, so it is also the index for plain time-range queries and the admin's ordering.
            models.Index(fields=["created_at", "provider_config"], name="usage_rec_created_config"),
            models.Index(fields=["provider_config", "created_at"], name="usage_rec_config_created"),
            models.Index(fields=["task", "created_at"], name="usage_rec_task_created"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(attempt__gte=1), name="usage_record_attempt_positive"),
            models.CheckConstraint(
                condition=models.Q(priced=False, cost_usd__isnull=True) | models.Q(priced=True, cost_usd__isnull=False),
                name="usage_record_priced_has_cost",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} #{self.attempt} {self.provider_type}/{self.model} {self.outcome}"

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Period(models.TextChoices):
    DAY = "day", "Day"
    MONTH = "month", "Month"


class TokenCounter(models.Model):
    """Tokens used and reserved by one config in one calendar window (in settings.TIME_ZONE).

    Only changed by single conditional UPDATEs in usage.services, never read-modify-written.
    """

    # Indexed by the unique constraint, which leads with it.
    provider_config = models.ForeignKey(
        ProviderConfig, on_delete=models.CASCADE, related_name="token_counters", db_index=False
    )
    period = models.CharField(max_length=5, choices=Period.choices)
    window_start = models.DateField(help_text="The first day of the window, in the configured time zone.")
    used = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider_config", "period", "window_start"], name="usage_token_counter_one_per_window"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.provider_config_id} {self.period} {self.window_start}: {self.used} used, {self.reserved} reserved"
        )


class TokenReservation(models.Model):
    """Tokens held against both windows of a config while a call is in flight, and what the call was.

    Deleting the row is the claim: whoever deletes it (the settling call or the expiry sweep) releases the
    tokens, so they are released exactly once. A reservation that expires unsettled (its worker died) becomes a
    usage row of outcome "unsettled" charging what was reserved (usage.services.reservations_expire), which is
    why it keeps the call's request id, user, task, model and input estimate. Its id is chosen by the caller
    (a random 63-bit number), so that the statements that reserve can name it before it exists.
    """

    provider_config = models.ForeignKey(ProviderConfig, on_delete=models.CASCADE, related_name="+")
    day_counter = models.ForeignKey(TokenCounter, on_delete=models.CASCADE, related_name="+")
    month_counter = models.ForeignKey(TokenCounter, on_delete=models.CASCADE, related_name="+")
    tokens = models.PositiveBigIntegerField(help_text="The input estimate plus the maximum output.")
    expires_at = models.DateTimeField(db_index=True)
    request_id = models.CharField(max_length=64, blank=True)
    user_id = models.BigIntegerField(null=True, blank=True)
    task = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=200, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    input_tokens = models.PositiveBigIntegerField(default=0, help_text="The input estimate within `tokens`.")

    def __str__(self) -> str:
        return f"{self.tokens} tokens for config {self.provider_config_id} until {self.expires_at}"


class Receipt(models.Model):
    """That one transaction recording usage rows committed.

    Its first statement inserts a receipt under an id the caller chose (a random 63-bit number). If the
    connection is lost while PostgreSQL commits, the transaction is sent again on a fresh connection
    (`runtime.db`), and there the receipt's INSERT collides: the rows were recorded once already, and are not
    recorded twice. Receipts are needed only for that moment; the expiry sweep deletes those older than an hour.
    """

    id = models.BigIntegerField(primary_key=True)
    created_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"receipt {self.id} at {self.created_at}"


class ProviderCooldown(models.Model):
    """Consecutive failures of one config, and until when the router should skip it.

    A row exists once the config has failed; `ProviderConfig.objects.select_related("cooldown")` or an
    annotation on `cooldown__until` reads it with the candidates in one query.
    """

    provider_config = models.OneToOneField(
        ProviderConfig, on_delete=models.CASCADE, primary_key=True, related_name="cooldown"
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    until = models.DateTimeField(null=True, blank=True)
    last_error_type = models.CharField(max_length=32, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"config {self.provider_config_id}: {self.consecutive_failures} failures, until {self.until}"

    def cooling_down(self, now=None) -> bool:
        return self.until is not None and self.until > (now or timezone.now())


# --- rollups ---------------------------------------------------------------------------------------------------
# Sums of usage rows, kept up to date as each attempt is recorded (usage.rollups), so that statistics read a few
# thousand rollup rows instead of millions of usage rows (usage.selectors).

# The latency histogram: the inclusive upper bound (ms) of each bucket, about two per doubling from 50 ms to
# 5 minutes, and one bucket above the last. Percentiles are interpolated within a bucket, so they are exact to
# within its width (a third to a half of its lower bound).
LATENCY_BUCKET_BOUNDS_MS: tuple[int, ...] = (
    50, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_500,
    10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000,
)  # fmt: skip
LATENCY_BUCKET_FIELDS: tuple[str, ...] = (
    *(f"latency_le_{bound}" for bound in LATENCY_BUCKET_BOUNDS_MS),
    f"latency_over_{LATENCY_BUCKET_BOUNDS_MS[-1]}",
)

# Every attempt that did not succeed, by kind: an error by its ErrorType, an output that failed validation, a
# call the client abandoned, a reservation that expired unsettled, and "other" for an error recorded without a
# known type.
FAILURE_KINDS: tuple[str, ...] = (*(e.value for e in ErrorType), "invalid_output", "aborted", "unsettled", "other")
FAILURE_FIELDS: dict[str, str] = {kind: f"errors_{kind}" for kind in FAILURE_KINDS}

# Cost is kept in units of 1e-10 USD (the usage rows' precision) as an integer, so that sums are exact on SQLite
# too, which stores decimals as floating point.
COST_UNITS_PER_USD = 10**10


class UsageRollup(models.Model):
    """Sums over the usage rows of one bucket. Only ever added to, by usage.rollups."""

    # No foreign keys: a deleted config or user keeps its history under its id. 0 stands for "none" (the
    # environment fallback; a call without a user) because unique constraints treat NULLs as distinct.
    config_id = models.BigIntegerField(help_text="0 for the environment fallback.")
    provider_type = models.CharField(max_length=16)
    model = models.CharField(max_length=200)
    task = models.CharField(max_length=32)

    # int4 where a bucket cannot plausibly reach 2**31: PostgreSQL sums those faster than bigints.
    calls = models.IntegerField(default=0)
    successes = models.IntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_usd_e10 = models.BigIntegerField("cost (1e-10 USD)", default=0, help_text="Of the priced calls.")
    unpriced_calls = models.IntegerField(default=0)
    latency_sum_ms = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


# One counter column per failure kind and per latency bucket: columns sum faster than a JSON map, and the
# constants above stay the one place that names them.
for _name in (*FAILURE_FIELDS.values(), *LATENCY_BUCKET_FIELDS):
    UsageRollup.add_to_class(_name, models.IntegerField(default=0))

# Every summed column, in a fixed order shared by the upserts (usage.rollups) and the reads (usage.selectors).
ROLLUP_MEASURES: tuple[str, ...] = (
    "calls",
    "successes",
    *FAILURE_FIELDS.values(),
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd_e10",
    "unpriced_calls",
    "latency_sum_ms",
    *LATENCY_BUCKET_FIELDS,
)


class DailyRollup(UsageRollup):
    """Usage per day (in settings.TIME_ZONE), provider config, model and task, without the user.

    A day because statistics are asked for in whole days of settings.TIME_ZONE: a 30-day range reads 30 rows per
    (config, model, task), where an hourly rollup would make it 720 (measured at 10 million usage rows: a 30-day
    query takes about 2 ms of SQL here against about 20 ms on hours). The price is that the buckets belong to
    the configured zone; after a change of TIME_ZONE, rebuild them (usage.rollups).
    """

    day = models.DateField()

    class Meta:
        constraints = [
            # Leads with day: it is also the index for the range scans of the statistics.
            models.UniqueConstraint(
                fields=["day", "config_id", "provider_type", "model", "task"], name="usage_daily_rollup_bucket"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.provider_type}/{self.model} {self.task}: {self.calls} calls"


class DailyUserRollup(UsageRollup):
    """Usage per day (in settings.TIME_ZONE), user, provider config, model and task: DailyRollup by user.

    Read only for statistics grouped or filtered by user: users multiply the rows (at 10 million usage rows
    from 500 users, about 490,000 rows here, against 1,300 in DailyRollup).
    """

    day = models.DateField()
    user_id = models.BigIntegerField(help_text="0 for calls without a user.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "user_id", "config_id", "provider_type", "model", "task"],
                name="usage_daily_user_rollup_bucket",
            ),
        ]
        indexes = [models.Index(fields=["user_id", "day"], name="usage_daily_user_rollup_user")]

    def __str__(self) -> str:
        return f"{self.day} user {self.user_id} {self.provider_type}/{self.model} {self.task}: {self.calls} calls"


# --- budget alerts -----------------------------------------------------------------------------------------------


def thresholds_parse(text: str) -> tuple[int, ...]:
    """Parse "80, 95, 100" into (80, 95, 100): whole percents from 1 to 1000, each once, sorted.

    Raises ValueError naming the bad part.
    """
    thresholds: set[int] = set()
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        try:
            percent = int(part.removesuffix("%"))
        except ValueError:
            raise ValueError(f"{part!r} is not a whole percent") from None
        if not 1 <= percent <= 1000:
            raise ValueError(f"{percent} is not between 1 and 1000")
        thresholds.add(percent)
    return tuple(sorted(thresholds))


def validate_thresholds(text: str) -> None:
    try:
        thresholds_parse(text)
    except ValueError as error:
        raise ValidationError(str(error)) from None


class BudgetPolicy(models.Model):
    """A config's own budget-alert thresholds; a config without one uses settings.BUDGET_ALERT_THRESHOLDS."""

    provider_config = models.OneToOneField(
        ProviderConfig, on_delete=models.CASCADE, primary_key=True, related_name="budget_policy"
    )
    alert_thresholds = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_thresholds],
        help_text=(
            "Percents of each daily and monthly token limit, comma-separated, e.g. 80,95,100. "
            "Empty: no budget alerts for this config."
        ),
    )

    class Meta:
        verbose_name = "budget policy"
        verbose_name_plural = "budget policies"

    def __str__(self) -> str:
        return f"{self.provider_config}: {self.alert_thresholds or 'no alerts'}"

    @property
    def thresholds(self) -> tuple[int, ...]:
        return thresholds_parse(self.alert_thresholds)


class AlertStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Gave up"
    SKIPPED = "skipped", "Not sent (no channel configured)"


class BudgetAlert(models.Model):
    """One crossing of one threshold of one limit in one window, and its delivery.

    Created by the attempt that crossed it (usage.alerts.budget_crossings_record); the unique constraint makes it
    once per window across all processes. Sent by `manage.py run_alert_worker`, never by the request.
    """

    provider_config = models.ForeignKey(
        ProviderConfig, on_delete=models.CASCADE, related_name="budget_alerts", db_index=False
    )
    period = models.CharField(max_length=5, choices=Period.choices)
    window_start = models.DateField(help_text="The first day of the window, in the configured time zone.")
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the limit.")
    token_limit = models.PositiveBigIntegerField(help_text="The limit when the threshold was crossed.")
    used = models.BigIntegerField(help_text="Tokens used in the window right after the crossing attempt.")
    created_at = models.DateTimeField(default=timezone.now)

    status = models.CharField(max_length=8, choices=AlertStatus.choices, default=AlertStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Delivery attempts so far.")
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=500, blank=True)
    # Per channel, so a retry after a failed webhook does not send the email again.
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider_config", "period", "window_start", "threshold"],
                name="usage_budget_alert_once_per_window",
            ),
        ]
        indexes = [
            # The worker's queue: small, because only pending alerts are in it.
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="usage_budget_alert_due",
            ),
            models.Index(fields=["created_at"], name="usage_budget_alert_created"),
        ]

    def __str__(self) -> str:
        return f"{self.provider_config_id} {self.period} {self.window_start} {self.threshold}%: {self.status}"

    @property
    def percent_used(self) -> int:
        return self.used * 100 // self.token_limit if self.token_limit else 0
