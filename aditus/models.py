"""Bearer tokens for the REST API."""

import hashlib
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

# Recording every request would turn each API call into a write; a minute is precise enough to tell
# a live token from an abandoned one.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiTokenQuerySet(models.QuerySet):
    def active(self, *, now: datetime | None = None) -> "ApiTokenQuerySet":
        """Return tokens that are neither revoked nor expired."""
        return self.filter(revoked_at__isnull=True, expires_at__gt=now or timezone.now())

    def for_secret(self, secret: str) -> "ApiTokenQuerySet":
        """Return the token (at most one) whose plaintext is `secret`, whatever its state."""
        return self.filter(token_hash=ApiToken.hash_secret(secret))


class ApiToken(models.Model):
    """A bearer token. Only its SHA-256 is stored; the plaintext is shown once, when it is issued."""

    PREFIX_LENGTH = 8

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(
        max_length=PREFIX_LENGTH,
        editable=False,
        help_text="The first characters of the token, to tell tokens apart. Not enough to use it.",
    )
    # A token carries 256 random bits, so a fast hash is enough: there is nothing to brute-force, and a
    # slow hash would cost every request.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    otp_device = models.ForeignKey(
        "otp_totp.TOTPDevice",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="api_tokens",
        help_text="The TOTP device that verified this token. Deleting the device unverifies the token.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="aditus_apitoken_user_created")]

    def __str__(self) -> str:
        return f"{self.prefix}…"

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, *, now: datetime | None = None) -> bool:
        return self.expires_at <= (now or timezone.now())

    @property
    def is_mfa_verified(self) -> bool:
        """Tell whether a confirmed TOTP device of the token's own user verified this token."""
        device = self.otp_device
        return device is not None and device.confirmed and device.user_id == self.user_id

    def revoke(self, *, now: datetime | None = None) -> bool:
        """Revoke the token; return False if it was already revoked."""
        now = now or timezone.now()
        updated = ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now)
        if updated:
            self.revoked_at = now
        return bool(updated)

    def use_recorded(self, *, now: datetime | None = None) -> bool:
        """Whether a use at `now` is already recorded, to LAST_USED_RESOLUTION (so `mark_used` would not write)."""
        now = now or timezone.now()
        return self.last_used_at is not None and self.last_used_at > now - LAST_USED_RESOLUTION

    def mark_used(self, *, now: datetime | None = None) -> bool:
        """Record a use, at most once per LAST_USED_RESOLUTION; return True if a row was written."""
        now = now or timezone.now()
        if self.use_recorded(now=now):
            return False
        cutoff = now - LAST_USED_RESOLUTION
        # The condition is repeated in SQL so concurrent requests in other processes write once between them.
        updated = (
            ApiToken.objects.filter(pk=self.pk)
            .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff))
            .update(last_used_at=now)
        )
        if updated:
            self.last_used_at = now
        return bool(updated)
