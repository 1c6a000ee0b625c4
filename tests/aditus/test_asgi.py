"""aditus.asgi: how the server process sets up its garbage collector, and closes what Django's handler opens."""

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from tests.asgi import asgi_request, http_scope

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# Run in a process of its own: importing aditus.asgi freezes and retunes the collector of the whole process.
PROBE = """
import gc, json
import aditus.asgi
print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def server_process_collector() -> dict:
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", PROBE],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "aditus.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_server_process_freezes_start_up_and_collects_the_young_generation_rarely():
    collector = server_process_collector()

    # Start-up's objects (Django, the URL conf, genai-prices' table) are never walked again...
    assert collector["frozen"] > 100_000
    # ...and the calls in flight do not set off a collection every 700 new objects (see aditus/asgi.py).
    assert collector["threshold"][0] == 20_000


def database_backends() -> int:
    """Sessions open on the test database, other than this one."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="counts PostgreSQL's sessions")
@pytest.mark.django_db(transaction=True)
def test_requests_django_serves_over_asgi_leave_no_database_connection_open():
    from aditus.asgi import application

    before = database_backends()
    gc.disable()  # a connection left open must not be closed by a collection that happens to run meanwhile
    try:
        answers = [asgi_request(application, http_scope("/readyz", method="GET"))[0] for _ in range(5)]
        left_open = database_backends() - before
    finally:
        gc.enable()
    assert answers == [200] * 5  # each request ran its query (over a connection of its own)
    assert left_open == 0
