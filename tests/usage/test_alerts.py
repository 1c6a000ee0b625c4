"""Budget alerts: noted once per threshold per window by the attempt that crosses it, sent by the worker.

Mail goes to a real SMTP server (aiosmtpd) and webhooks to a real HTTP server, both on loopback, started here.
"""

import email
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from providers.clients.base import TokenUsage
from usage import services
from usage.alerts import alerts_requeue, alerts_send_due, budget_crossings_record
from usage.models import AlertStatus, BudgetAlert, BudgetPolicy, Period, TokenCounter
from usage.services import Windows, attempt_record, tokens_reserve

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/usage/budgetalert/"


@pytest.fixture(autouse=True)
def _no_opportunistic_sweep(monkeypatch):
    monkeypatch.setattr(services, "_next_sweep", float("inf"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mailbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self):
        self.messages: list[Message] = []
        self.envelopes = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.envelopes.append(envelope)
            self.messages.append(email.message_from_bytes(envelope.original_content))
        return "250 Message accepted for delivery"

    @property
    def subjects(self) -> list[str]:
        return sorted(message["Subject"] for message in self.messages)


@pytest.fixture
def mailbox(settings):
    """A real SMTP server on loopback, and the settings that send alerts to it (and to no webhook)."""
    handler = Mailbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_TIMEOUT = 5
    settings.DEFAULT_FROM_EMAIL = "aditus@example.com"
    settings.ALERT_EMAILS = ["ops@example.com", "finance@example.com"]
    settings.ALERT_WEBHOOK_URL = None
    settings.BUDGET_ALERT_THRESHOLDS = (80, 95, 100)
    yield handler
    controller.stop()


class Webhook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        with server.lock:
            server.posts.append((self.path, self.headers["Content-Type"], json.loads(body)))
            status = server.statuses.pop(0) if server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook(settings):
    """A real HTTP server on loopback taking Slack-style webhooks; set `.statuses` to fail some."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    server.posts, server.statuses, server.lock = [], [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/services/T000/B000/secret-token"
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 5
    yield server
    server.shutdown()
    server.server_close()


def spend(config, tokens: int, *, now=None, reserve: bool = True):
    """One provider call of `tokens` tokens (input + output), reserved first as the gateway does."""
    reservation = tokens_reserve(config=config, tokens=tokens, now=now) if reserve else None
    return attempt_record(
        reservation=reservation,
        request_id="req-alert",
        user_id=None,
        task="extraction",
        config=config,
        provider_type=config.provider_type,
        model=config.model_name,
        attempt=1,
        outcome="success",
        usage=TokenUsage(input_tokens=tokens - tokens // 4, output_tokens=tokens // 4),
        latency_ms=300,
        streamed=False,
        now=now,
    )


def alerts(config) -> list[tuple[str, int]]:
    return sorted(BudgetAlert.objects.filter(provider_config=config).values_list("period", "threshold"))


EXPECTED_SUBJECTS = sorted(
    [
        "[aditus] Capped: 80% of its daily token limit used",
        "[aditus] Capped: 95% of its daily token limit used",
        "[aditus] Capped: 100% of its daily token limit used",
        "[aditus] Capped: 80% of its monthly token limit used",
    ]
)


def test_crossing_a_threshold_notes_an_alert_and_sends_nothing_during_the_request(provider_config, mailbox):
    config = provider_config(display_name="Capped", daily_token_limit=1_000)

    spend(config, 799)
    assert alerts(config) == []
    spend(config, 1)

    alert = BudgetAlert.objects.get()
    assert (alert.period, alert.threshold, alert.token_limit, alert.used) == (Period.DAY, 80, 1_000, 800)
    assert alert.window_start == Windows.at(timezone.now()).day
    assert (alert.status, alert.attempts, alert.email_sent_at) == (AlertStatus.PENDING, 0, None)
    assert mailbox.messages == []  # the request only notes it; the worker sends


def test_recording_is_not_delayed_or_failed_when_mail_is_down(provider_config, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nothing listens there
    settings.ALERT_EMAILS = ["ops@example.com"]
    config = provider_config(daily_token_limit=1_000)

    started = time.monotonic()
    spend(config, 1_000)

    assert time.monotonic() - started < 1
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [80, 95, 100]
    assert TokenCounter.objects.get(provider_config=config, period=Period.DAY).used == 1_000


def test_an_attempt_below_any_threshold_costs_no_extra_query(provider_config, mailbox):
    config = provider_config(daily_token_limit=1_000)
    spend(config, 100)
    reservation = tokens_reserve(config=config, tokens=500)

    with CaptureQueriesContext(connection) as context:
        attempt_record(
            reservation=reservation,
            request_id="req-cheap",
            user_id=None,
            task="extraction",
            config=config,
            provider_type=config.provider_type,
            model=config.model_name,
            attempt=1,
            outcome="success",
            usage=TokenUsage(input_tokens=400, output_tokens=99),  # 599 of 1,000: below 80%
            latency_ms=300,
            streamed=False,
            known_failures=0,
        )

    sql = [query["sql"] for query in context.captured_queries if "SAVEPOINT" not in query["sql"].upper()]
    assert not any("budgetalert" in statement for statement in sql)
    # No read beyond the lock of the reservation being settled: the thresholds come back with the counters.
    assert [statement.split(" FROM ")[1].split()[0] for statement in sql if statement.startswith("SELECT")] == [
        "usage_tokenreservation"
    ]
    assert not BudgetAlert.objects.exists()


def test_sequential_calls_send_exactly_one_email_per_threshold_crossed(provider_config, mailbox):
    config = provider_config(display_name="Capped", daily_token_limit=1_000, monthly_token_limit=1_100)

    for _ in range(50):
        spend(config, 20)

    assert alerts(config) == [("day", 80), ("day", 95), ("day", 100), ("month", 80)]
    output = StringIO()
    call_command("run_alert_worker", "--once", stdout=output)
    assert "4 sent, 0 to retry, 0 given up" in output.getvalue()
    assert mailbox.subjects == EXPECTED_SUBJECTS
    assert all(envelope.rcpt_tos == ["ops@example.com", "finance@example.com"] for envelope in mailbox.envelopes)

    # Past the daily limit (an attempt that was not reserved still counts) but below 95% of the month, and
    # another pass of the worker: nothing new.
    spend(config, 20, reserve=False)
    call_command("run_alert_worker", "--once", stdout=StringIO())
    assert len(mailbox.messages) == 4
    assert set(BudgetAlert.objects.values_list("status", flat=True)) == {AlertStatus.SENT}
    assert BudgetAlert.objects.filter(sent_at__isnull=False, email_sent_at__isnull=False).count() == 4


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite serialises every writer on one database lock, so it cannot show a race; CI runs this on PostgreSQL",
)
@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_send_exactly_one_email_per_crossing(provider_config, mailbox):
    config = provider_config(display_name="Capped", daily_token_limit=1_000, monthly_token_limit=1_100)
    failures: list[BaseException] = []

    def in_threads(count: int, work) -> None:
        start = threading.Barrier(count)

        def run() -> None:
            try:
                start.wait()
                work()
            except BaseException as error:  # surface deadlocks and lost connections in the test
                failures.append(error)
            finally:
                connection.close()

        threads = [threading.Thread(target=run) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    in_threads(50, lambda: spend(config, 20))
    assert failures == []
    assert TokenCounter.objects.get(provider_config=config, period=Period.DAY).used == 1_000
    assert alerts(config) == [("day", 80), ("day", 95), ("day", 100), ("month", 80)]

    in_threads(4, alerts_send_due)  # four workers race for the same four alerts
    assert failures == []
    assert mailbox.subjects == EXPECTED_SUBJECTS
    assert set(BudgetAlert.objects.values_list("status", "attempts")) == {(AlertStatus.SENT, 1)}


def test_an_attempt_that_crosses_two_thresholds_notes_both(provider_config, mailbox):
    config = provider_config(daily_token_limit=1_000)

    spend(config, 960)

    assert alerts(config) == [("day", 80), ("day", 95)]
    assert set(BudgetAlert.objects.values_list("used", flat=True)) == {960}


def test_each_window_alerts_once(provider_config, mailbox):
    config = provider_config(daily_token_limit=1_000, monthly_token_limit=10_000)
    today = timezone.now()
    tomorrow = today + timedelta(days=1)

    spend(config, 900, now=today)
    spend(config, 40, now=today)  # still over 80%, below 95%
    spend(config, 900, now=tomorrow)

    days = BudgetAlert.objects.filter(period=Period.DAY).order_by("window_start")
    assert list(days.values_list("window_start", "threshold")) == [
        (Windows.at(today).day, 80),
        (Windows.at(tomorrow).day, 80),
    ]
    # The month: 1,840 of 10,000 so far (tomorrow may be in the next month, where the count starts again).
    assert not BudgetAlert.objects.filter(period=Period.MONTH).exists()


def test_a_config_policy_overrides_the_default_thresholds(provider_config, mailbox):
    halves = provider_config(daily_token_limit=1_000)
    BudgetPolicy.objects.create(provider_config=halves, alert_thresholds="50, 150")
    silent = provider_config(daily_token_limit=1_000)
    BudgetPolicy.objects.create(provider_config=silent, alert_thresholds="")

    for config in (halves, silent):
        spend(config, 1_000)
        spend(config, 600, reserve=False)

    assert alerts(halves) == [("day", 50), ("day", 150)]
    assert alerts(silent) == []


def test_the_database_keeps_one_alert_per_threshold_and_window(provider_config, mailbox):
    config = provider_config(daily_token_limit=1_000)
    day = Windows.at(timezone.now()).day

    for _ in range(2):
        budget_crossings_record(config=config, counters=[(Period.DAY, day, 850, None)], tokens=100)

    assert alerts(config) == [("day", 80)]


@pytest.mark.parametrize("text", ["abc", "0", "1001", "80;95"])
def test_a_policy_refuses_thresholds_that_are_not_whole_percents(provider_config, text):
    policy = BudgetPolicy(provider_config=provider_config(), alert_thresholds=text)

    with pytest.raises(ValidationError):
        policy.full_clean()


def test_the_email_says_which_limit_of_which_config_and_when_it_resets(provider_config, mailbox, settings):
    settings.ALERT_EMAILS = ["ops@example.com"]
    config = provider_config(display_name="Gemini Fast", monthly_token_limit=2_000_000)

    spend(config, 1_900_000)
    alerts_send_due()

    assert mailbox.subjects == [
        "[aditus] Gemini Fast: 80% of its monthly token limit used",
        "[aditus] Gemini Fast: 95% of its monthly token limit used",
    ]
    body = mailbox.messages[0].get_payload()
    assert "has used 1,900,000 of its monthly token limit of 2,000,000 tokens (95%)" in body
    assert f"started on {Windows.at(timezone.now()).month:%Y-%m-%d}" in body
    assert "The window resets at " in body
    assert mailbox.messages[0]["From"] == "aditus@example.com"


def test_the_webhook_gets_slack_compatible_json(provider_config, mailbox, webhook, settings):
    settings.ALERT_EMAILS = []
    config = provider_config(display_name="Capped", daily_token_limit=1_000)
    spend(config, 800)

    report = alerts_send_due()

    assert report.sent == 1 and mailbox.messages == []
    [(path, content_type, payload)] = webhook.posts
    assert path == "/services/T000/B000/secret-token" and content_type == "application/json"
    assert list(payload) == ["text"]
    assert payload["text"].startswith("[aditus] Capped: 80% of its daily token limit used\nCapped (gemini")
    alert = BudgetAlert.objects.get()
    assert alert.status == AlertStatus.SENT and alert.webhook_sent_at is not None and alert.email_sent_at is None


def test_a_failed_webhook_is_retried_with_backoff_and_the_email_is_not_sent_again(
    provider_config, mailbox, webhook, settings
):
    settings.ALERT_RETRY_BASE_SECONDS = 30
    webhook.statuses = [500, 502]
    config = provider_config(daily_token_limit=1_000)
    spend(config, 800)
    start = timezone.now()

    first = alerts_send_due(now=start)

    assert (first.sent, first.retrying) == (0, 1)
    alert = BudgetAlert.objects.get()
    assert (alert.status, alert.attempts, alert.last_error) == (AlertStatus.PENDING, 1, "webhook: HTTP 500")
    assert alert.next_attempt_at == start + timedelta(seconds=30)
    assert alert.email_sent_at is not None and len(mailbox.messages) == 1

    assert alerts_send_due(now=start + timedelta(seconds=29)).retrying == 0  # not due yet
    assert alerts_send_due(now=start + timedelta(seconds=30)).retrying == 1  # 502: backoff doubles
    alert.refresh_from_db()
    assert alert.next_attempt_at == start + timedelta(seconds=90)
    assert alerts_send_due(now=start + timedelta(seconds=90)).sent == 1

    alert.refresh_from_db()
    assert (alert.status, alert.attempts, alert.last_error) == (AlertStatus.SENT, 3, "")
    assert len(webhook.posts) == 3 and len(mailbox.messages) == 1


def test_it_gives_up_after_the_last_attempt_and_an_admin_can_queue_it_again(provider_config, settings, mailbox):
    mailbox_port = settings.EMAIL_PORT
    settings.EMAIL_PORT = free_port()  # mail is down
    settings.ALERT_MAX_ATTEMPTS = 3
    config = provider_config(daily_token_limit=1_000)
    spend(config, 800)
    moment = timezone.now()

    for _ in range(3):
        alerts_send_due(now=moment)
        moment += timedelta(hours=2)

    alert = BudgetAlert.objects.get()
    assert (alert.status, alert.attempts) == (AlertStatus.FAILED, 3)
    assert alert.last_error.startswith("email: ConnectionRefusedError")
    assert alerts_send_due(now=moment + timedelta(days=1)).failed == 0  # given up: left alone

    settings.EMAIL_PORT = mailbox_port  # mail is back
    assert alerts_requeue(alert_ids=[alert.pk]) == 1
    assert alerts_send_due().sent == 1
    assert len(mailbox.messages) == 1


def test_the_webhook_url_never_appears_in_an_error(provider_config, settings, mailbox):
    settings.ALERT_EMAILS = []
    settings.ALERT_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/services/T000/B000/secret-token"
    config = provider_config(daily_token_limit=1_000)
    spend(config, 800)

    alerts_send_due()

    alert = BudgetAlert.objects.get()
    assert alert.last_error.startswith("webhook: ConnectError")
    assert "secret-token" not in alert.last_error


def test_an_alert_claimed_by_a_worker_that_died_is_sent_after_its_lease(provider_config, mailbox, settings):
    settings.ALERT_SEND_LEASE_SECONDS = 300
    config = provider_config(daily_token_limit=1_000)
    spend(config, 800)
    moment = timezone.now()
    # What a worker's claim leaves behind when it dies before sending.
    BudgetAlert.objects.update(attempts=1, next_attempt_at=moment + timedelta(seconds=300))

    assert alerts_send_due(now=moment).sent == 0
    assert alerts_send_due(now=moment + timedelta(seconds=300)).sent == 1
    assert len(mailbox.messages) == 1 and BudgetAlert.objects.get().attempts == 2


def test_an_alert_with_no_channel_configured_is_marked_skipped(provider_config, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = [], None
    config = provider_config(daily_token_limit=1_000)
    spend(config, 800)

    assert alerts_send_due().skipped == 1
    assert BudgetAlert.objects.get().status == AlertStatus.SKIPPED


# The admin list.


@pytest.fixture
def noted_alerts(provider_config, settings):
    settings.BUDGET_ALERT_THRESHOLDS = (80, 95, 100)
    first = provider_config(display_name="First Config", daily_token_limit=1_000)
    second = provider_config(display_name="Second Config", monthly_token_limit=1_000)
    spend(first, 800)
    spend(second, 1_000)
    BudgetAlert.objects.filter(provider_config=second, threshold=100).update(
        status=AlertStatus.FAILED, attempts=8, last_error="email: SMTPServerDisconnected"
    )
    return first, second


def test_the_alert_list_refuses_a_superuser_without_otp(superuser_without_otp, noted_alerts):
    client = Client()
    client.force_login(superuser_without_otp)

    response = client.get(CHANGELIST)

    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_alert_list_shows_and_filters_alerts(superadmin_session_client, noted_alerts):
    first, second = noted_alerts

    page = superadmin_session_client.get(CHANGELIST)
    assert page.status_code == 200
    assert "SMTPServerDisconnected" in page.content.decode()
    assert shown(page) == [(first.pk, 80), (second.pk, 80), (second.pk, 95), (second.pk, 100)]

    for query, expected in [
        ({"status__exact": "failed"}, [(second.pk, 100)]),
        ({"period__exact": "day"}, [(first.pk, 80)]),
        ({"threshold": "95"}, [(second.pk, 95)]),
        ({"provider_config__id__exact": first.pk}, [(first.pk, 80)]),
    ]:
        assert shown(superadmin_session_client.get(CHANGELIST, query)) == expected, query


def shown(page) -> list[tuple[int, int]]:
    return sorted((alert.provider_config_id, alert.threshold) for alert in page.context["cl"].result_list)


def test_the_alert_list_is_read_only(superadmin_session_client, noted_alerts):
    alert = BudgetAlert.objects.filter(status=AlertStatus.PENDING).first()

    assert superadmin_session_client.get(f"{CHANGELIST}add/").status_code == 403
    assert superadmin_session_client.post(f"{CHANGELIST}{alert.pk}/delete/", {"post": "yes"}).status_code == 403
    assert superadmin_session_client.post(f"{CHANGELIST}{alert.pk}/change/", {"threshold": 1}).status_code == 403
    alert.refresh_from_db()
    assert alert.threshold == 80 and BudgetAlert.objects.count() == 4


def test_an_admin_queues_a_given_up_alert_again(superadmin_session_client, noted_alerts):
    given_up = BudgetAlert.objects.get(status=AlertStatus.FAILED)
    pending = BudgetAlert.objects.filter(status=AlertStatus.PENDING).first()

    response = superadmin_session_client.post(
        CHANGELIST, {"action": "send_again", "_selected_action": [given_up.pk, pending.pk]}, follow=True
    )

    assert response.status_code == 200 and "Queued 1 alert for the alert worker." in response.content.decode()
    given_up.refresh_from_db()
    assert (given_up.status, given_up.attempts, given_up.last_error) == (AlertStatus.PENDING, 0, "")


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the worker runs in its own process, which cannot see SQLite's in-memory test database",
)
@pytest.mark.django_db(transaction=True)
def test_the_worker_process_sends_what_is_due_and_stops_on_sigterm(provider_config, mailbox):
    config = provider_config(display_name="Capped", daily_token_limit=1_000)
    spend(config, 800)
    database = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(django_settings.EMAIL_PORT),
        "ALERT_EMAILS": "ops@example.com",
        "DEFAULT_FROM_EMAIL": "aditus@example.com",
    }
    env.pop("ALERT_WEBHOOK_URL", None)
    worker = subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, "manage.py", "run_alert_worker", "--interval", "0.2"],
        cwd=django_settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not mailbox.messages and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.1)
        spend(config, 150)  # 95%, while the worker runs
        while len(mailbox.messages) < 2 and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)

    assert worker.returncode == 0
    assert mailbox.subjects == [
        "[aditus] Capped: 80% of its daily token limit used",
        "[aditus] Capped: 95% of its daily token limit used",
    ]
    assert "Alert worker polling every 0.2 s." in output and "1 sent" in output
    assert set(BudgetAlert.objects.values_list("status", flat=True)) == {AlertStatus.SENT}
