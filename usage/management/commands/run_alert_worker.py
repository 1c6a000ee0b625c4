"""Send budget alerts: a long-running worker, or one pass with --once (e.g. from cron)."""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from usage.alerts import alerts_send_due


class Command(BaseCommand):
    help = (
        "Send the pending budget alerts by email (ALERT_EMAILS) and webhook (ALERT_WEBHOOK_URL), retrying failures "
        "with backoff. Runs until stopped (SIGTERM or Ctrl-C), polling every ALERT_WORKER_INTERVAL_SECONDS; "
        "any number may run at once."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Send what is due now, then exit.")
        parser.add_argument(
            "--interval", type=float, default=None, help="Seconds between polls (ALERT_WORKER_INTERVAL_SECONDS)."
        )

    def handle(self, *args, once: bool, interval: float | None, **options):
        interval = settings.ALERT_WORKER_INTERVAL_SECONDS if interval is None else interval
        stop = threading.Event()
        if not once and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                # Finish the alert in hand, then stop: a send cut short would be sent again after its lease.
                signal.signal(signum, lambda *_: stop.set())
        if not once:
            self.stdout.write(f"Alert worker polling every {interval:g} s.")
        while True:
            if not once:
                close_old_connections()  # a connection the database dropped while we slept is replaced
            report = alerts_send_due()
            if once or report.sent or report.retrying or report.failed or report.skipped:
                self.stdout.write(
                    f"Budget alerts: {report.sent} sent, {report.retrying} to retry, {report.failed} given up, "
                    f"{report.skipped} with no channel configured."
                )
            if once or stop.wait(interval):
                return
