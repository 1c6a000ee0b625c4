"""`.ci/demo` refuses ports already in use with a message naming the variable, before it sets anything up."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def demo(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".ci" / "demo")],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def busy_port():
    """A loopback port something is listening on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("variable", ["PORT", "FAKE_PORT"])
def test_a_port_in_use_stops_the_demo_with_a_message_naming_it(busy_port, variable):
    other = "FAKE_PORT" if variable == "PORT" else "PORT"

    run = demo(**{variable: str(busy_port), other: str(free_port())})

    assert run.returncode == 1
    assert f"Port {busy_port} ({variable}, for " in run.stderr
    assert "already in use on 127.0.0.1" in run.stderr
    assert f"{variable}={busy_port + 1} .ci/demo" in run.stderr
    assert "Traceback" not in run.stderr
    assert "starting" not in run.stdout  # it stopped before setting anything up


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "eighty"}, "PORT='eighty' is not a port number"),
        ({"PORT": "8123", "FAKE_PORT": "8123"}, "PORT and FAKE_PORT are both 8123"),
    ],
)
def test_a_bad_port_setting_stops_the_demo(env, message):
    run = demo(**env)

    assert run.returncode == 1 and message in run.stderr
