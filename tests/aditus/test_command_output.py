"""Commands run as operators run them, in a process of their own: results on stdout, log lines on stderr only."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Quiet-Lantern-Orbit-73"


@pytest.fixture(scope="module")
def manage(tmp_path_factory):
    """Run manage.py on a database of its own (SQLite, migrated once), without a terminal on stdin."""
    database = tmp_path_factory.mktemp("commands") / "db.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "DEBUG": "1",
        "LOG_FORMAT": "plain",
        "LOG_LEVEL": "INFO",
        "ADMIN_PASSWORD": PASSWORD,
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run("migrate", "--noinput", "-v", "0").returncode == 0
    return run


def test_create_superadmin_without_a_terminal_says_which_option_to_use(manage):
    run = manage("create_superadmin", "--username", "nobody")

    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "EOFError" not in run.stderr
    assert "CommandError: There is no terminal to prompt for the password" in run.stderr
    assert "--password-env" in run.stderr
    assert run.stdout == ""


def test_results_go_to_stdout_and_log_lines_to_stderr(manage, fake_providers):
    created = manage("create_superadmin", "--username", "admin", "--password-env", "ADMIN_PASSWORD")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("Created super-admin 'admin'")
    seeded = manage("seed_demo", "--user", "admin", "--fake-url", fake_providers.url)
    assert seeded.returncode == 0, seeded.stderr

    tested = manage("test_providers")

    assert tested.returncode == 0, tested.stderr
    lines = tested.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "MODEL", "RESULT", "ERROR", "TYPE", "LATENCY", "MS", "MESSAGE"]
    assert lines[-1] == "All 3 provider config(s) passed."
    assert not [line for line in lines if " INFO " in line]
    assert tested.stderr.count(" INFO providers.services ") == 3
