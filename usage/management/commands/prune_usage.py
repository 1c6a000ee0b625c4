"""Delete old usage rows in small batches; the rollups (and so every statistic) stay as they are."""

import re
import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from usage.models import UsageRecord

DURATION = re.compile(r"^(\d+)([hdw])$")
UNITS = {"h": "hours", "d": "days", "w": "weeks"}

# Oldest first, through the created_at index; the batch is one short transaction, so the gateway's inserts
# and the statistics never wait on it for long.
_DELETE_BATCH = (
    f"DELETE FROM {UsageRecord._meta.db_table} WHERE id IN ("  # noqa: S608 - the table name is the model's
    f"SELECT id FROM {UsageRecord._meta.db_table} WHERE created_at < %s ORDER BY created_at LIMIT %s)"
)


def parse_age(value: str) -> timedelta:
    """Read an age such as 180d, 26w or 36h, or raise CommandError naming the format."""
    match = DURATION.match(value.strip().lower())
    if match is None or int(match.group(1)) < 1:
        raise CommandError(
            f"--older-than takes a positive whole number of hours, days or weeks, as in 36h, 180d or 26w; got {value!r}"
        )
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = (
        "Delete usage rows older than --older-than in batches, each its own short transaction, showing progress. "
        "The rollups are kept, so statistics over any range stay the same; only calls recorded while "
        "USAGE_ROLLUPS_ENABLED was off (and never added with usage.rollups.rollups_add_records) are lost."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help="An age: 180d (days), 26w (weeks) or 36h (hours).")
        parser.add_argument("--batch-size", type=int, default=10_000, help="Rows per DELETE (default 10000).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, older_than, batch_size, dry_run, **options):
        age = parse_age(older_than)
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1; got {batch_size}")
        cutoff = timezone.now() - age
        expected = UsageRecord.objects.filter(created_at__lt=cutoff).count()
        when = f"created before {cutoff:%Y-%m-%d %H:%M:%S %Z}"
        if dry_run:
            self.stdout.write(f"Would delete {expected:,} usage rows {when}. Nothing was deleted (--dry-run).")
            return

        started = time.monotonic()
        deleted = batches = 0
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(_DELETE_BATCH, [connection.ops.adapt_datetimefield_value(cutoff), batch_size])
                count = cursor.rowcount
            if count == 0:
                break
            deleted += count
            batches += 1
            elapsed = time.monotonic() - started
            # The total was counted at the start; rows the gateway adds meanwhile are newer than the cutoff.
            self.stderr.write(
                f"{deleted:>14,} / {max(expected, deleted):,} rows deleted ({deleted / max(elapsed, 1e-9):,.0f} rows/s)"
            )
            if count < batch_size:
                break
        seconds = time.monotonic() - started
        self.stdout.write(
            f"Deleted {deleted:,} usage rows {when} in {batches} batch{'es' if batches != 1 else ''} "
            f"({seconds:.1f} s). The rollups are kept."
        )
