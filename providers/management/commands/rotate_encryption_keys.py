"""Re-encrypt every encrypted value under the first key of FIELD_ENCRYPTION_KEYS."""

import argparse
import logging

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from providers import services
from providers.management.help_format import EpilogAsWrittenFormatter

logger = logging.getLogger(__name__)

EPILOG = """\
Zero-downtime procedure:
  1. Generate a key and put it FIRST in FIELD_ENCRYPTION_KEYS, keeping the old key after it; deploy everywhere.
     (Every process can now read both; new values are written under the new key.)
  2. Run this command. It is safe to interrupt and re-run: values already under the first key are skipped.
  3. When it reports nothing left and no failures, remove the old key from FIELD_ENCRYPTION_KEYS and deploy.
"""


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted value (every EncryptedTextField, e.g. provider API keys) with the first key of "
        "FIELD_ENCRYPTION_KEYS, in batches, so that older keys can then be removed. Idempotent and safe to "
        "interrupt. Exits non-zero if any value cannot be decrypted by any key (those are left untouched)."
    )

    def add_arguments(self, parser):
        parser.formatter_class = EpilogAsWrittenFormatter
        parser.epilog = EPILOG
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=100,
            help="Rows per batch; each batch is its own transaction (default 100).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be re-encrypted and what cannot be; write nothing."
        )

    def handle(self, *args, batch_size: int, dry_run: bool, **options):
        if len(settings.FIELD_ENCRYPTION_KEYS) < 2:
            self.stdout.write(
                "Note: FIELD_ENCRYPTION_KEYS holds one key, so every readable value is already under it; "
                "this run only checks that every value can be decrypted."
            )
        verb = "would re-encrypt" if dry_run else "re-encrypted"
        undecryptable: list[str] = []
        changed_meanwhile = 0
        for column in services.encrypted_columns():
            progress = None
            for progress in services.encrypted_column_reencrypt(column=column, batch_size=batch_size, dry_run=dry_run):
                self._progress_line(progress)
            if progress is None:
                self.stdout.write(f"{column.label}: no values.")
                continue
            if self.stderr.isatty():
                self.stderr.write("", style_func=str)  # end the progress line
            raced = progress.changed_meanwhile
            raced = f", changed by someone else meanwhile {raced}" if raced else ""
            self.stdout.write(
                f"{column.label}: {verb} {progress.reencrypted}, already under the first key "
                f"{progress.already_current}, undecryptable {len(progress.undecryptable)}{raced}."
            )
            undecryptable += [f"{column.label} {row}" for row in progress.undecryptable]
            changed_meanwhile += progress.changed_meanwhile
            logger.info(
                "rotate_encryption_keys column=%s reencrypted=%s current=%s undecryptable=%s dry_run=%s",
                column.label,
                progress.reencrypted,
                progress.already_current,
                len(progress.undecryptable),
                dry_run,
            )

        if changed_meanwhile:
            self.stdout.write(f"{changed_meanwhile} value(s) changed while this ran; run the command again.")
        if undecryptable:
            rows = "\n".join(f"  {row}" for row in undecryptable)
            raise CommandError(
                f"{len(undecryptable)} value(s) cannot be decrypted by any key in FIELD_ENCRYPTION_KEYS and were left "
                f"untouched (is an old key missing from the list?). Do not remove any key yet.\n{rows}"
            )
        if dry_run:
            self.stdout.write("Dry run: nothing was written.")
        elif not changed_meanwhile:
            done = "Every encrypted value is under the first key"
            if len(settings.FIELD_ENCRYPTION_KEYS) > 1:
                done += "; the other keys can now be removed from FIELD_ENCRYPTION_KEYS"
            self.stdout.write(self.style.SUCCESS(done + "."))

    def _progress_line(self, progress: services.ReencryptProgress) -> None:
        total = max(progress.total, progress.seen)  # rows added while this runs are re-encrypted too
        percent = 100 * progress.seen // total if total else 100
        width = 30
        bar = "#" * (width * percent // 100)
        line = f"{progress.column.label} [{bar:<{width}}] {progress.seen}/{total} ({percent}%)"
        # On a terminal the bar redraws in place; in a log (a pipe, CI) it is one line per batch.
        if self.stderr.isatty():
            self.stderr.write("\r" + line, style_func=str, ending="")
            self.stderr.flush()
        else:
            self.stderr.write(line, style_func=str)
