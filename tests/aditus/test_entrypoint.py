"""deploy/entrypoint.sh outside Docker: the image's build step, start-up, probes, migrate, static files, shutdown."""

import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
HOST = "aditus.example.com"


def dockerfile_instruction(pattern: str) -> str:
    """The first instruction matching `pattern`, with its line continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    match = re.search(pattern, joined, re.MULTILINE)
    assert match, pattern
    return match.group(1)


def base_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A production environment and nothing of the caller's, except PATH; the project's Python as `python`."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHON": sys.executable,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": HOST,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "STATIC_ROOT": str(tmp_path / "static"),
        "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the tests stand in for a proxy on this host
        **overrides,
    }


def run(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def wait_until_healthy(port: int, server: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}: {server.stderr.read()}")
        try:
            if get(port, "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail("no 200 from /healthz in time")


def test_check_runs_the_deployment_checks_and_finds_nothing(tmp_path):
    result = run("check", "--fail-level", "WARNING", env=base_env(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_an_unknown_command_is_refused_with_the_list_of_commands(tmp_path):
    result = run("start", env=base_env(tmp_path))

    assert result.returncode == 64
    assert "serve, migrate, collectstatic, check, manage" in result.stderr


def test_a_malformed_boolean_stops_serve_before_it_starts(tmp_path):
    result = run("serve", env=base_env(tmp_path, ACCESS_LOG="maybe"), timeout=30)

    assert result.returncode == 64 and "expected a boolean, got 'maybe'" in result.stderr


def test_the_dockerfile_runs_the_entrypoint_as_a_non_root_user_with_a_healthcheck():
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", DOCKERFILE, re.MULTILINE)
    assert stages == [("python:3.11-slim", "builder"), ("python:3.11-slim", "runtime")]
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.MULTILINE)
    assert 'ENTRYPOINT ["/app/deploy/entrypoint.sh"]' in DOCKERFILE and 'CMD ["serve"]' in DOCKERFILE
    assert re.search(r"^EXPOSE 8000$", DOCKERFILE, re.MULTILINE)
    # Migrations are a step of their own (`entrypoint.sh migrate`), never part of the build.
    assert not re.search(r"^RUN .*migrate", re.sub(r"\\\n\s*", " ", DOCKERFILE), re.MULTILINE)


def test_serve_runs_the_built_image_s_steps_end_to_end(tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_12345.db").write_bytes(b"left by an earlier run")
    (metrics_dir / "notes.txt").write_text("not ours to delete")
    port = free_port()
    env = base_env(
        tmp_path,
        PORT=str(port),
        WEB_CONCURRENCY="2",
        LOG_FORMAT="json",
        ACCESS_LOG="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        GRACEFUL_TIMEOUT_SECONDS="5",
    )

    # The image's build step, with the Dockerfile's own dummy settings (and only a different STATIC_ROOT).
    build_env = dict(
        re.findall(r"(\w+)=(\S+)", dockerfile_instruction(r"^RUN (.*?)deploy/entrypoint\.sh collectstatic"))
    )
    assert set(build_env) == {"DEBUG", "SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "DATABASE_URL"}
    built = run(
        "collectstatic",
        env={"PATH": env["PATH"], "PYTHON": sys.executable, "STATIC_ROOT": env["STATIC_ROOT"], **build_env},
    )
    assert built.returncode == 0, built.stderr
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())["paths"]

    server = subprocess.Popen(
        [str(ENTRYPOINT), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_healthy(port, server)

        # Probes: answered over plain http for a host that is not in ALLOWED_HOSTS, as an orchestrator sends them.
        status, headers, body = get(port, "/healthz", **{"X-Request-ID": "probe-42"})
        assert (status, json.loads(body), headers["x-request-id"]) == (200, {"status": "ok"}, "probe-42")
        assert "server" not in headers
        status, _, body = get(port, "/readyz")
        assert status == 503 and "unapplied migration" in json.loads(body)["reason"]

        migrated = run("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        status, _, body = get(port, "/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})

        # Plain http to the real host is sent to https; through the trusted proxy (127.0.0.1) it is served.
        status, headers, _ = get(port, "/admin/login/", Host=HOST)
        assert (status, headers["location"]) == (301, f"https://{HOST}/admin/login/")
        status, headers, body = get(port, "/admin/login/", Host=HOST, **{"X-Forwarded-Proto": "https"})
        assert status == 200
        assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        assert "script-src 'self'" in headers["content-security-policy"]

        # Static files: hashed names from the manifest, compressed, cached for good.
        hashed = manifest["admin/css/base.css"]
        assert f"/static/{hashed}" in body.decode()
        https = {"Host": HOST, "X-Forwarded-Proto": "https"}
        status, headers, _ = get(port, f"/static/{hashed}", **https, **{"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert "immutable" in headers["cache-control"]

        # The Dockerfile's HEALTHCHECK command, as Docker runs it.
        healthcheck = dockerfile_instruction(r"^HEALTHCHECK .*? CMD (.*)$")
        probe_env = {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PORT": str(port)}
        assert subprocess.run(["sh", "-c", healthcheck], env=probe_env, timeout=30).returncode == 0
        closed = {**probe_env, "PORT": str(free_port())}
        assert subprocess.run(["sh", "-c", healthcheck], env=closed, capture_output=True, timeout=30).returncode != 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        stderr = server.stderr.read()
        server.stdout.close()
        server.stderr.close()

    assert server.returncode == 0, stderr
    assert not (metrics_dir / "counter_12345.db").exists()
    assert (metrics_dir / "notes.txt").exists()
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert any(line["message"].startswith("Started parent process") for line in lines)
    [probe_line] = [line for line in lines if line["logger"] == "uvicorn.access" and line["request_id"] == "probe-42"]
    assert '"GET /healthz HTTP/1.1" 200' in probe_line["message"]


def test_two_workers_share_one_throttle_whatever_x_forwarded_for_says(tmp_path):
    port = free_port()
    env = base_env(
        tmp_path,
        PORT=str(port),
        WEB_CONCURRENCY="2",
        AUTH_THROTTLE_RATE="5/min",
        SECURE_SSL_REDIRECT="0",
        # The proxy is elsewhere: the test client, on loopback, is not trusted to say who the client is.
        FORWARDED_ALLOW_IPS="10.9.9.9",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    assert run("migrate", env=env).returncode == 0
    server = subprocess.Popen(
        [str(ENTRYPOINT), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    try:
        wait_until_healthy(port, server)
        statuses = []
        for attempt in range(30):
            # A new connection each time, so that both workers take some; a new name, so no lockout counts.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request(
                    "POST",
                    "/api/v1/auth/token",
                    body=json.dumps({"username": f"nobody-{attempt}", "password": "wrong"}),
                    headers={
                        "Host": HOST,
                        "Content-Type": "application/json",
                        "X-Forwarded-For": f"203.0.113.{attempt}",
                    },
                )
                statuses.append(connection.getresponse().status)
            finally:
                connection.close()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    assert statuses.count(400) == 5 and statuses.count(429) == 25, statuses
