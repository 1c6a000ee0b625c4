"""The calendar windows token limits count in: a day and a month of settings.TIME_ZONE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time

from django.utils import timezone

from usage.models import Period


@dataclass(frozen=True)
class Windows:
    """The calendar windows a moment falls in, in settings.TIME_ZONE."""

    day: date
    month: date

    @classmethod
    def at(cls, moment: datetime) -> Windows:
        today = timezone.localtime(moment, timezone.get_default_timezone()).date()
        return cls(day=today, month=today.replace(day=1))

    def start(self, period: str) -> date:
        return self.day if period == Period.DAY else self.month


def window_resets_at(period: str, start: date) -> datetime:
    """Return when the window of `period` that starts on `start` ends: the next local midnight or 1st."""
    if period == Period.DAY:
        following = start + timedelta(days=1)
    else:
        following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime.combine(following, clock_time.min, tzinfo=timezone.get_default_timezone())
