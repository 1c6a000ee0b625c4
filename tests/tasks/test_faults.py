"""Faults on the request path, served as production serves it (`deploy/entrypoint.sh serve`, two uvicorn workers):
the database dropping every connection mid-load, and a worker killed mid-call. PostgreSQL only: the server needs a
database another process can reach and a server whose sessions can be terminated."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection

from tests.aditus.test_entrypoint import ENTRYPOINT, free_port, wait_until_healthy

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL sessions to terminate"),
    pytest.mark.django_db(transaction=True),
]

LETTER = json.dumps({"profile": "Ada Lovelace, Python developer.", "job": "Backend engineer at Acme."}).encode()
LETTER_PATH = "/api/v1/cover-letter/generate"
SERVER_APPLICATION_NAME = "aditus-faults-test"


def server_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The test database and production settings, as `deploy/entrypoint.sh serve` runs them."""
    settings = connection.settings_dict
    # The server's sessions carry a name of their own, so that only they are terminated, never the test's own.
    url = (
        f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
        f"?application_name={SERVER_APPLICATION_NAME}"
    )
    metrics = tmp_path / "prometheus"
    metrics.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHON": sys.executable,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": ",".join(django_settings.FIELD_ENCRYPTION_KEYS),  # to read the test's configs
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": url,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "ADITUS_ENV_FILE": "/dev/null",
        "LOG_LEVEL": "WARNING",
        **overrides,
    }


class Serving:
    """`deploy/entrypoint.sh serve` on a free port, stopped (and its log kept) at the end."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [str(ENTRYPOINT), "serve"],
            env={**env, "PORT": str(self.port)},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def __enter__(self) -> Serving:
        self.process.stderr = self.log.open()  # wait_until_healthy reads it when the server died
        wait_until_healthy(self.port, self.process)
        return self

    def __exit__(self, *exc_info) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process.stderr.close()
        self._log_file.close()

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]


def post(port: int, token: str, body: bytes = LETTER, *, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        client.request(
            "POST",
            LETTER_PATH,
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = client.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        client.close()


def terminate_the_servers_sessions() -> int:
    """End every session of the server, as a database restart would; return how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [SERVER_APPLICATION_NAME],
        )
        return cursor.fetchone()[0]


@pytest.fixture
def caller(task_config, ordinary_user_token):
    """A config with (large) limits, so that every call reserves and settles; the ordinary user's token."""
    config = task_config("openai", daily_token_limit=10**9, monthly_token_limit=10**10)
    return config, ordinary_user_token


def test_no_usage_row_is_lost_when_the_database_drops_every_connection_mid_load(caller, tmp_path):
    from usage.models import TokenReservation, UsageRecord

    _config, token = caller
    calls, clients, terminations = 3000, 16, 5
    answers: list[tuple[int, dict[str, str], bytes]] = []
    failures: list[BaseException] = []
    next_call = iter(range(calls))
    lock = threading.Lock()

    with Serving(server_env(tmp_path, WEB_CONCURRENCY="2"), tmp_path / "server.log") as server:

        def client() -> None:
            while True:
                with lock:
                    if next(next_call, None) is None:
                        return
                try:
                    answer = post(server.port, token)
                except BaseException as error:  # noqa: BLE001 - reported below
                    failures.append(error)
                    continue
                with lock:
                    answers.append(answer)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        terminated = []
        for number in range(terminations):
            # Spread over the load: after each fifth of the calls.
            while len(answers) < calls * (number + 1) // (terminations + 1) and any(t.is_alive() for t in threads):
                time.sleep(0.02)
            terminated.append(terminate_the_servers_sessions())
        for thread in threads:
            thread.join(timeout=300)

        assert failures == []
        assert len(answers) == calls
        assert all(count > 0 for count in terminated), terminated
        statuses = Counter(status for status, _, _ in answers)
        assert set(statuses) <= {200, 503}, statuses
        for status, headers, body in answers:
            # Never an HTML 500: a call that could not be prepared is a JSON 503 that says when to come back.
            assert headers["content-type"].startswith("application/json"), body[:200]
            if status == 503:
                assert headers["retry-after"] and json.loads(body)["error"]["type"] == "database_unavailable"
        served = {json.loads(body)["request_id"] for status, _, body in answers if status == 200}
        assert len(served) == statuses[200] > calls * 0.8

        # Every call answered 200 has its row (saved just after its answer), and nothing is left reserved.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            saved = set(UsageRecord.objects.filter(outcome="success").values_list("request_id", flat=True))
            if served <= saved and not TokenReservation.objects.exists():
                break
            time.sleep(0.5)
        assert served - saved == set()
        left = list(TokenReservation.objects.values_list("request_id", flat=True))
        assert left == [], {request_id: request_id in served for request_id in left}


def test_a_worker_killed_mid_call_leaves_its_reservation_to_be_charged_as_unsettled(caller, tmp_path):
    from usage.models import TokenCounter, TokenReservation, UsageRecord
    from usage.services import reservations_expire

    config, token = caller
    config.set_api_key("sk-test-faults~stall=30000")  # the stream sends its first delta, then waits
    config.save()
    body = json.dumps({**json.loads(LETTER), "stream": True}).encode()
    env = server_env(tmp_path, WEB_CONCURRENCY="2", TOKEN_RESERVATION_TTL_SECONDS="1")

    with Serving(env, tmp_path / "server.log") as server:
        workers = server.worker_pids()
        assert len(workers) >= 2

        def stream() -> None:
            with contextlib.suppress(OSError, http.client.HTTPException):  # the worker dies mid-answer
                post(server.port, token, body, timeout=60)

        streaming = threading.Thread(target=stream)
        streaming.start()
        deadline = time.monotonic() + 30
        while not TokenReservation.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        reservation = TokenReservation.objects.get()
        time.sleep(0.5)  # the first delta is out: the call is under way
        for worker in workers:  # whichever serves the call (and uvicorn's other children)
            os.kill(worker, signal.SIGKILL)
        streaming.join(timeout=30)

    assert not UsageRecord.objects.exists()  # the worker died before it could record anything
    time.sleep(1.0)  # the reservation expires
    assert reservations_expire() == 1

    row = UsageRecord.objects.get()
    assert (row.outcome, row.request_id, row.provider_config_id) == ("unsettled", reservation.request_id, config.pk)
    assert row.input_tokens + row.output_tokens == reservation.tokens and row.priced
    day = TokenCounter.objects.get(provider_config=config, period="day")
    assert (day.used, day.reserved) == (reservation.tokens, 0)
