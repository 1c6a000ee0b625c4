"""aditus.asgi: how the server process sets up its garbage collector."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
