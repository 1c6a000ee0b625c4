from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from providers.clients.base import ErrorType, ProviderType
from providers.models import ProviderConfig, Task


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    ERROR = "error", "Error"
    ABORTED = "aborted", "Aborted (client went away)"
    INVALID_OUTPUT = "invalid_output", "Invalid output"


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
    provider_type = models.CharField(max_length=16, choices=[(t.value, t.name.title()) for t in ProviderType])
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
    """Tokens held against both windows of a config while a call is in flight.

    Deleting the row is the claim: whoever deletes it (the settling call or the expiry sweep) releases the
    tokens, so they are released exactly once.
    """

    provider_config = models.ForeignKey(ProviderConfig, on_delete=models.CASCADE, related_name="+")
    day_counter = models.ForeignKey(TokenCounter, on_delete=models.CASCADE, related_name="+")
    month_counter = models.ForeignKey(TokenCounter, on_delete=models.CASCADE, related_name="+")
    tokens = models.PositiveBigIntegerField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.tokens} tokens for config {self.provider_config_id} until {self.expires_at}"


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
