from __future__ import annotations

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from providers.clients.base import Endpoint, ProviderType, provider_type_choices
from providers.fields import EncryptedTextField, Sealed
from providers.validators import validate_model_for_provider, validate_model_name, validate_provider_base_url


class Task(models.TextChoices):
    """The application's AI tasks; each config says which of them it serves."""

    EXTRACTION = "extraction", "Job-posting extraction"
    IMAGE_VALIDATION = "image_validation", "Job-image validation"
    CV_DRAFTING = "cv_drafting", "CV drafting"
    COVER_LETTER = "cover_letter", "Cover letter"


# The boolean field on ProviderConfig that says a config serves a task.
TASK_FLAGS: dict[str, str] = {
    Task.EXTRACTION: "default_for_extraction",
    Task.IMAGE_VALIDATION: "default_for_image_validation",
    Task.CV_DRAFTING: "default_for_cv_drafting",
    Task.COVER_LETTER: "default_for_cover_letter",
}


# Task names short enough for an admin list column (the full names go in the cell's title).
TASK_SHORT_NAMES: dict[str, str] = {
    Task.EXTRACTION: "extraction",
    Task.IMAGE_VALIDATION: "images",
    Task.CV_DRAFTING: "CVs",
    Task.COVER_LETTER: "letters",
}


def mask_key(prefix: str, last_four: str) -> str:
    """Show a key as `AIza…f3x9`: enough to recognise it, too little to use it."""
    if not last_four:
        return "••••"
    return f"{prefix}…{last_four}"


class ProviderConfigQuerySet(models.QuerySet):
    def active(self):
        return self.filter(is_active=True)

    def serving(self, task: str):
        return self.active().filter(**{TASK_FLAGS[task]: True})


class ProviderConfig(models.Model):
    provider_type = models.CharField(max_length=16, choices=provider_type_choices)
    display_name = models.CharField(max_length=100, unique=True)
    model_name = models.CharField(max_length=200, validators=[validate_model_name])
    api_key = EncryptedTextField("API key", help_text="Stored encrypted; never shown again after saving.")
    base_url = models.URLField(
        max_length=500,
        blank=True,
        validators=[validate_provider_base_url],
        help_text="Optional: an OpenAI-compatible endpoint, a corporate proxy or the fake providers.",
    )
    is_active = models.BooleanField(default=True)

    default_for_extraction = models.BooleanField("job extraction", default=False)
    default_for_image_validation = models.BooleanField("image validation", default=False)
    default_for_cv_drafting = models.BooleanField("CV drafting", default=False)
    default_for_cover_letter = models.BooleanField("cover letters", default=False)

    priority = models.PositiveIntegerField(
        default=100, help_text="Lower is tried first; equal priorities split traffic by weight."
    )
    weight = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Share of traffic among equal priorities."
    )

    daily_token_limit = models.PositiveBigIntegerField(null=True, blank=True, help_text="Empty: unlimited.")
    monthly_token_limit = models.PositiveBigIntegerField(null=True, blank=True, help_text="Empty: unlimited.")
    input_price_per_million = models.DecimalField(
        "input price override (USD per 1M tokens)",
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
    )
    output_price_per_million = models.DecimalField(
        "output price override (USD per 1M tokens)",
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
    )
    request_timeout_seconds = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(600)]
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    key_prefix = models.CharField(max_length=4, blank=True, editable=False)
    key_last_four = models.CharField(max_length=4, blank=True, editable=False)
    key_updated_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_tested_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_test_ok = models.BooleanField(null=True, editable=False)
    last_test_error = models.CharField(max_length=500, blank=True, editable=False)

    objects = ProviderConfigQuerySet.as_manager()

    class Meta:
        ordering = ["priority", "display_name"]
        verbose_name = "provider configuration"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(provider_type__in=[t.value for t in ProviderType]),
                name="provider_config_known_type",
            ),
        ]

    def __str__(self) -> str:
        return self.display_name

    def clean(self) -> None:
        super().clean()
        if self.provider_type and self.model_name:
            try:
                validate_model_for_provider(self.provider_type, self.model_name)
            except ValidationError as error:
                raise ValidationError({"model_name": error.messages}) from None

    @property
    def masked_key(self) -> str:
        return mask_key(self.key_prefix, self.key_last_four)

    @property
    def tasks(self) -> list[str]:
        return [task for task, flag in TASK_FLAGS.items() if getattr(self, flag)]

    def set_api_key(self, plaintext: str) -> None:
        """Replace the key: sealed at once, with the hints the admin shows."""
        self.api_key = Sealed.seal(plaintext, "providers.ProviderConfig.api_key")
        # Show a prefix only when the key is long enough that 8 visible characters give nothing away.
        self.key_prefix = plaintext[:4] if len(plaintext) >= 20 else ""
        self.key_last_four = plaintext[-4:] if len(plaintext) >= 12 else ""
        self.key_updated_at = timezone.now()

    def reveal_api_key(self) -> str:
        return self.api_key.reveal()

    def endpoint(self) -> Endpoint:
        return Endpoint(
            provider_type=ProviderType(self.provider_type),
            model=self.model_name,
            base_url=self.base_url or None,
            timeout=float(self.request_timeout_seconds),
        )

    def record_test(self, *, ok: bool, error: str = "") -> None:
        self.last_tested_at = timezone.now()
        self.last_test_ok = ok
        self.last_test_error = error[:500]
        if self.pk:
            self.save(update_fields=["last_tested_at", "last_test_ok", "last_test_error"])


class AuditEntry(LogEntry):
    """The audit log of provider configurations: Django's admin LogEntry rows of ProviderConfig, read-only.

    A proxy, so that the admin lists and filters them like any model; every workflow in providers.services (and
    the admin's own saves) writes them.
    """

    class Meta:
        proxy = True
        verbose_name = "audit entry"
        verbose_name_plural = "audit log entries"
