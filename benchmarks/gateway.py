"""Gateway benchmark: what aditus adds to a provider call, measured from outside with wrk.

One command sets everything up (throwaway PostgreSQL database, migrations, a user, a token and a provider config
pointed at the fake provider), starts the fake provider and one production-like uvicorn process, loads both
targets with wrk in alternation (direct to the fake, through aditus, repeated), tears everything down and writes
a Markdown report. See benchmarks/README.md.

    .venv/bin/python benchmarks/gateway.py            # full run, a few minutes
    .venv/bin/python benchmarks/gateway.py --quick    # a smoke run of the harness
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
LUA_SCRIPT = BENCH_DIR / "request.lua"
SEED_SCRIPT = BENCH_DIR / "seed.py"
DEFAULT_OUTPUT = BENCH_DIR / "results" / "gateway.md"
LOOPBACK = "127.0.0.1"

TASK_PATH = "/api/v1/cover-letter/generate"
STAND_IN_PATH = "/admin/login/"
OPENAI_PATH = "/openai/v1/chat/completions"
PROVIDER_KEY = "sk-bench"
PROVIDER_MODEL = "gpt-4o-mini"
SLOW_PROVIDER_MS = 1000

# The task request the clients send: a realistic cover-letter call (a few KB in, a letter out).
COVER_LETTER_REQUEST = {
    "profile": (
        "Maria Keller, senior backend engineer, 9 years of experience. Python (Django, FastAPI, asyncio), "
        "PostgreSQL, Redis, Kafka, Kubernetes, AWS. Led the migration of a payments platform from a monolith to "
        "services handling 4,000 requests per second; cut p99 latency from 900 ms to 120 ms; mentored six "
        "engineers; introduced contract tests and on-call runbooks. MSc Computer Science, TU Munich. "
        "Languages: German (native), English (fluent), Spanish (intermediate). Open to hybrid work in Berlin."
    ),
    "job": (
        "Staff Software Engineer, Platform (Berlin, hybrid). Acme Mobility builds the routing and billing "
        "platform behind 30 million rides a year. You will own the design of our Python services, lead the "
        "reliability roadmap, and raise the bar for the engineers around you. Requirements: 8+ years building "
        "backend systems in Python; deep PostgreSQL knowledge; experience with event-driven architectures; a "
        "track record of leading cross-team technical projects. Nice to have: Kafka, Kubernetes, payments. "
        "We offer: EUR 95,000-115,000, 30 days of holiday, a learning budget and a yearly public transport pass."
    ),
    "tone": "professional",
    "language": "en",
}

# Used only in --stand-in mode, when no gateway request can be captured: the provider call a prompt would make.
STAND_IN_PROVIDER_BODY = {
    "model": PROVIDER_MODEL,
    "messages": [
        {"role": "system", "content": "Write a concise, specific cover letter in the requested tone and language."},
        {"role": "user", "content": json.dumps(COVER_LETTER_REQUEST)},
    ],
    "max_tokens": 1024,
}

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


class HarnessError(Exception):
    """The benchmark could not be run (setup, a process, wrk). Not a missed bar."""


# ---------------------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    duration_s: float
    slow_duration_s: float
    warmup_s: float
    rounds: int
    wrk_threads: int
    slow_clients: tuple[int, ...]
    pg_url: str
    output: Path
    stand_in: bool
    keep_logs: bool
    strict: bool
    ablate: str = ""
    overhead_only: bool = False


def parse_duration(text: str) -> float:
    """`10`, `10s`, `1.5s`, `2m` -> seconds."""
    text = text.strip().lower()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for suffix in ("ms", "s", "m"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def parse_options(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        description="Benchmark aditus against the fake provider called directly. Writes a Markdown report."
    )
    parser.add_argument("--duration", default=None, help="wrk run length for scenarios 1 and 2 (default 10s).")
    parser.add_argument(
        "--slow-duration", default=None, help="wrk run length for the 1 s provider scenario (default 15s)."
    )
    parser.add_argument("--warmup", default=None, help="Unrecorded warm-up per target and scenario (default 2s).")
    parser.add_argument("--rounds", type=int, default=None, help="Direct/aditus pairs per scenario (default 3).")
    parser.add_argument("--quick", action="store_true", help="Short smoke run: 3s/5s runs, 1 round, 1s warm-up.")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1; the machine is small).")
    parser.add_argument(
        "--slow-clients",
        default="64,256,512",
        help="Client counts for the 1 s provider scenario (default 64,256,512).",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", f"postgresql://postgres@{LOOPBACK}:5432/postgres"),
        help="Maintenance database used to create and drop the throwaway one (env BENCH_PG_URL).",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"Report path (default {DEFAULT_OUTPUT}).")
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help=f"Load GET {STAND_IN_PATH} instead of the task endpoint (to exercise the harness only).",
    )
    parser.add_argument(
        "--ablate",
        default="",
        help="Serve with this bespoke piece swapped for its idiomatic counterpart (benchmarks/ablate.py); runs "
        "scenarios 1 and 2 only.",
    )
    parser.add_argument(
        "--overhead-only", action="store_true", help="Scenarios 1 and 2 only (the ablation's baseline)."
    )
    parser.add_argument("--keep-logs", action="store_true", help="Keep the server logs even when all went well.")
    parser.add_argument("--strict", action="store_true", help="Exit 2 when a bar is missed (default: exit 0).")
    args = parser.parse_args(argv)

    quick = args.quick
    rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        slow_clients = tuple(int(part) for part in args.slow_clients.split(",") if part.strip())
        duration = parse_duration(args.duration or ("3s" if quick else "10s"))
        slow_duration = parse_duration(args.slow_duration or ("5s" if quick else "15s"))
        warmup = parse_duration(args.warmup or ("1s" if quick else "2s"))
    except ValueError as exc:
        parser.error(str(exc))
    if min(duration, slow_duration) < 1 or warmup < 0:
        parser.error("durations must be at least 1s (warm-up at least 0)")
    return Options(
        duration_s=duration,
        slow_duration_s=slow_duration,
        warmup_s=warmup,
        rounds=rounds,
        wrk_threads=max(1, args.wrk_threads),
        slow_clients=slow_clients,
        pg_url=args.pg_url,
        output=args.output,
        stand_in=args.stand_in,
        keep_logs=args.keep_logs,
        strict=args.strict,
        ablate=args.ablate,
        overhead_only=args.overhead_only or bool(args.ablate),
    )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Processes, /proc and HTTP


def run_command(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a short command from the project root; return its stdout or raise HarnessError with its output."""
    try:
        done = subprocess.run(  # noqa: S603 - argv built here, no shell
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"{' '.join(argv[:3])}: {exc}") from exc
    if done.returncode != 0:
        raise HarnessError(
            f"{' '.join(argv[:4])} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return done.stdout


class ManagedProcess:
    """A server process started by the harness in its own session, logging to a file, stopped by its pid."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise HarnessError(f"{self.name} is not running")
        return self._process.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
                self.argv, cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise HarnessError(
                f"{self.name} exited with {self._process.returncode}; last log lines:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the command name: state is field 3 of the man page; utime and stime are fields 14 and 15.
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, field_name: str = "VmRSS") -> float:
    """A memory figure of /proc/<pid>/status (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise HarnessError(f"{field_name} not found for pid {pid}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float


def http_call(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30
) -> HttpResponse:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    started = time.perf_counter()
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    return HttpResponse(
        status=response.status,
        headers={name.lower(): value for name, value in response.getheaders()},
        body=data,
        elapsed_s=time.perf_counter() - started,
    )


def wait_until_serving(process: ManagedProcess, url: str, *, timeout: float = 60) -> None:
    """Poll `url` until it answers with any HTTP status; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        with contextlib.suppress(OSError, http.client.HTTPException):
            http_call("GET", url, timeout=2)
            return
        time.sleep(0.2)
    raise HarnessError(f"{process.name} did not answer {url} within {timeout:.0f}s; log:\n{process.log_tail()}")


# ---------------------------------------------------------------------------------------------------------------
# The throwaway database and the fixtures


class ThrowawayDatabase:
    """A fresh PostgreSQL database next to the maintenance one in `pg_url`, dropped (forcibly) at the end."""

    def __init__(self, pg_url: str):
        self.pg_url = pg_url
        self.name = f"aditus_bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.server_version = ""

    @property
    def url(self) -> str:
        parts = urlsplit(self.pg_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{self.name}", parts.query, ""))

    def _execute(self, statement) -> None:
        import psycopg

        with psycopg.connect(self.pg_url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(statement)
            self.server_version = connection.execute("SHOW server_version").fetchone()[0]

    def create(self) -> None:
        from psycopg import sql

        try:
            self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        except Exception as exc:
            raise HarnessError(f"Cannot create the database {self.name} via {self.pg_url}: {exc}") from exc

    def drop(self) -> None:
        from psycopg import sql

        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))


def server_env(database_url: str) -> dict[str, str]:
    """Production-like settings for every Django process of the run: DEBUG off, fresh keys, the throwaway db."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="aditus.settings",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        FIELD_ENCRYPTION_KEYS=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        DATABASE_URL=database_url,
        ALLOWED_HOSTS=f"{LOOPBACK},localhost",
        # Production redirects http to https; here, as behind a TLS-terminating proxy, the server sees plain http.
        SECURE_SSL_REDIRECT="0",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_seed(env: dict[str, str], *args: str) -> dict:
    output = run_command([sys.executable, str(SEED_SCRIPT), *args], env=env, timeout=120)
    for line in output.splitlines():
        if line.startswith("SEED_JSON "):
            return json.loads(line.removeprefix("SEED_JSON "))
    raise HarnessError(f"seed.py {args[0]} printed no result:\n{output[-2000:]}")


class CaptureProxy:
    """A loopback proxy in front of the fake that records what the gateway sends, so the direct runs replay it."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.captured: list[tuple[str, str, bytes]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                proxy._forward(self)

            def do_GET(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="capture-proxy", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = {name: value for name, value in handler.headers.items() if name.lower() not in HOP_BY_HOP}
        self.captured.append((handler.command, handler.path, body))
        upstream = http_call(
            handler.command, f"http://{LOOPBACK}:{self.upstream_port}{handler.path}", body=body, headers=headers
        )
        handler.send_response(upstream.status)
        for name, value in upstream.headers.items():
            if name not in HOP_BY_HOP:
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(upstream.body)))
        handler.end_headers()
        handler.wfile.write(upstream.body)

    def __enter__(self) -> CaptureProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------------------------------------------------------
# Targets and wrk


@dataclass(frozen=True)
class Target:
    """One kind of request wrk sends: `direct` (the fake) or `aditus` (the gateway)."""

    name: str
    method: str
    url: str
    body: bytes | None
    headers: dict[str, str]

    def write(self, directory: Path) -> dict[str, str]:
        """Write the body and headers files the Lua script reads; return its environment variables."""
        env = {"BENCH_METHOD": self.method, "BENCH_BODY_FILE": "", "BENCH_HEADERS_FILE": ""}
        if self.body is not None:
            body_file = directory / f"{self.name}.body"
            body_file.write_bytes(self.body)
            env["BENCH_BODY_FILE"] = str(body_file)
        headers_file = directory / f"{self.name}.headers"
        headers_file.write_text("".join(f"{name}: {value}\n" for name, value in self.headers.items()))
        env["BENCH_HEADERS_FILE"] = str(headers_file)
        return env

    def call(self, timeout: float = 30) -> HttpResponse:
        return http_call(self.method, self.url, body=self.body, headers=self.headers, timeout=timeout)


@dataclass(frozen=True)
class Load:
    connections: int
    threads: int
    duration_s: float
    timeout_s: float = 10.0


@dataclass(frozen=True)
class WrkRun:
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    socket_errors: dict[str, int]
    non2xx: int
    statuses: dict[str, int]
    gateway_ms_mean: float | None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        """Responses outside 2xx plus socket errors (connect, read, write, timeout)."""
        socket_errors = sum(count for kind, count in self.socket_errors.items() if kind != "status")
        return self.non2xx + socket_errors

    @classmethod
    def from_json(cls, data: dict) -> WrkRun:
        latency = data["latency_us"]
        count = data["gateway_ms_count"]
        return cls(
            requests=data["requests"],
            duration_s=data["duration_us"] / 1e6,
            p50_ms=latency["p50"] / 1000,
            p90_ms=latency["p90"] / 1000,
            p99_ms=latency["p99"] / 1000,
            max_ms=latency["max"] / 1000,
            mean_ms=latency["mean"] / 1000,
            socket_errors=data["errors"],
            non2xx=data["non2xx"],
            statuses=data["statuses"],
            gateway_ms_mean=data["gateway_ms_sum"] / count if count else None,
        )


@dataclass(frozen=True)
class Sample:
    """One recorded wrk run and the CPU the two servers spent during it."""

    target: str
    round: int
    run: WrkRun
    gateway_cpu_s: float
    fake_cpu_s: float

    @property
    def gateway_cpu_ms_per_request(self) -> float:
        return 1000 * self.gateway_cpu_s / self.run.requests if self.run.requests else float("nan")

    @property
    def fake_cpu_ms_per_request(self) -> float:
        return 1000 * self.fake_cpu_s / self.run.requests if self.run.requests else float("nan")


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    return (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0].strip()


# ---------------------------------------------------------------------------------------------------------------
# The bench: servers, targets, alternated runs


@dataclass
class Bench:
    options: Options
    wrk: str
    workdir: Path
    gateway: ManagedProcess
    fake: ManagedProcess
    direct: Target
    aditus: Target
    seed_env: dict[str, str]
    config_id: int | None
    memory: list[tuple[str, float, float, float]] = field(default_factory=list)

    def run_wrk(self, target: Target, load: Load) -> WrkRun:
        env = dict(os.environ, **target.write(self.workdir))
        argv = [
            self.wrk,
            f"-t{min(load.threads, load.connections)}",
            f"-c{load.connections}",
            f"-d{load.duration_s:g}s",
            f"--timeout={load.timeout_s:g}s",
            "--latency",
            "-s",
            str(LUA_SCRIPT),
            target.url,
        ]
        try:
            done = subprocess.run(  # noqa: S603 - argv built here, no shell
                argv, env=env, capture_output=True, text=True, timeout=load.duration_s + 120, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"wrk did not finish: {' '.join(argv)}") from exc
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                return WrkRun.from_json(json.loads(line.removeprefix("BENCH_JSON ")))
        raise HarnessError(f"wrk printed no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")

    def measure(self, target: Target, load: Load, round_number: int) -> Sample:
        gateway_before, fake_before = cpu_seconds(self.gateway.pid), cpu_seconds(self.fake.pid)
        run = self.run_wrk(target, load)
        gateway_after, fake_after = cpu_seconds(self.gateway.pid), cpu_seconds(self.fake.pid)
        self.gateway.check_alive()
        self.fake.check_alive()
        return Sample(target.name, round_number, run, gateway_after - gateway_before, fake_after - fake_before)

    def alternate(self, label: str, load: Load, targets: tuple[Target, Target] | None = None) -> list[Sample]:
        """Warm up both targets, then run direct, aditus, direct, aditus ... `rounds` times."""
        targets = targets or (self.direct, self.aditus)
        if self.options.warmup_s > 0:
            warmup = Load(load.connections, load.threads, max(1.0, self.options.warmup_s), load.timeout_s)
            for target in targets:
                self.run_wrk(target, warmup)
        samples = []
        for round_number in range(1, self.options.rounds + 1):
            for target in targets:
                sample = self.measure(target, load, round_number)
                samples.append(sample)
                run = sample.run
                log(
                    f"{label} round {round_number}/{self.options.rounds} {target.name:>6}: "
                    f"{run.rps:8.1f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
                    f"errors {run.errors}  gateway CPU {sample.gateway_cpu_ms_per_request:.2f} ms/req"
                )
        self.record_memory(label)
        return samples

    def record_memory(self, label: str) -> None:
        self.memory.append(
            (label, memory_mib(self.gateway.pid), memory_mib(self.gateway.pid, "VmHWM"), memory_mib(self.fake.pid))
        )

    def set_provider_key(self, api_key: str) -> None:
        """Change the key of the gateway's provider config (its latency directive rides in the key)."""
        if self.config_id is not None:
            run_seed(self.seed_env, "update", "--config-id", str(self.config_id), "--api-key", api_key)


def direct_target(fake_port: int, body: bytes, api_key: str) -> Target:
    return Target(
        name="direct",
        method="POST",
        url=f"http://{LOOPBACK}:{fake_port}{OPENAI_PATH}",
        body=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )


def aditus_target(gateway_port: int, token: str, *, stand_in: bool) -> Target:
    if stand_in:
        return Target("aditus", "GET", f"http://{LOOPBACK}:{gateway_port}{STAND_IN_PATH}", None, {})
    return Target(
        name="aditus",
        method="POST",
        url=f"http://{LOOPBACK}:{gateway_port}{TASK_PATH}",
        body=json.dumps(COVER_LETTER_REQUEST).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )


def check_response(target: Target, response: HttpResponse, *, min_seconds: float = 0.0) -> None:
    if not 200 <= response.status < 300:
        hint = ""
        if target.name == "aditus" and response.status == 404:
            hint = f"\n{TASK_PATH} does not exist yet; run with --stand-in to exercise the harness alone."
        raise HarnessError(
            f"{target.name}: {target.method} {target.url} answered {response.status}: {response.body[:500]!r}{hint}"
        )
    if response.elapsed_s < min_seconds:
        raise HarnessError(
            f"{target.name}: answered in {response.elapsed_s * 1000:.0f} ms, expected at least "
            f"{min_seconds * 1000:.0f} ms: the provider latency directive is not in effect"
        )


def capture_provider_body(
    *, env: dict[str, str], config_id: int, fake_port: int, proxy: CaptureProxy, aditus: Target
) -> bytes:
    """Send one task call while the config points at the capture proxy; repoint the config at the fake."""
    check_response(aditus, aditus.call())
    calls = [body for method, path, body in proxy.captured if method == "POST" and path.endswith("/chat/completions")]
    if not calls:
        raise HarnessError(f"The gateway made no chat completion call through the proxy: {proxy.captured!r}")
    run_seed(
        env,
        "update",
        "--config-id",
        str(config_id),
        "--base-url",
        f"http://{LOOPBACK}:{fake_port}/openai/v1",
        "--api-key",  # a stored key is never sent to an origin it was not entered for
        PROVIDER_KEY,
    )
    seen = len(proxy.captured)
    check_response(aditus, aditus.call())
    if len(proxy.captured) != seen:
        raise HarnessError("The gateway kept calling the old base URL after the config changed.")
    return calls[0]


@contextlib.contextmanager
def running_bench(options: Options, workdir: Path) -> Iterator[tuple[Bench, ThrowawayDatabase]]:
    """Database, fixtures, fake provider, gateway: set up, yielded, torn down whatever happens."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise HarnessError("wrk is not installed (apt-get install -y wrk)")
    with contextlib.ExitStack() as stack:
        database = ThrowawayDatabase(options.pg_url)
        log(f"creating database {database.name}")
        database.create()
        stack.callback(database.drop)
        env = server_env(database.url)
        if options.ablate:
            env["ADITUS_ABLATE"] = options.ablate
            env["PYTHONPATH"] = str(ROOT)
        log("migrating")
        run_command([sys.executable, "manage.py", "migrate", "--noinput"], env=env)

        fake_port, gateway_port = free_port(), free_port()
        fake = ManagedProcess(
            "fake provider",
            [sys.executable, "manage.py", "fake_providers", "--host", LOOPBACK, "--port", str(fake_port)],
            env=env,
            log_path=workdir / "fake.log",
        )
        gateway = ManagedProcess(
            "gateway",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.ablate:application" if options.ablate else "aditus.asgi:application",
                "--host",
                LOOPBACK,
                "--port",
                str(gateway_port),
                # As `deploy/entrypoint.sh serve` runs it, but one worker: the bars are per process.
                "--workers",
                "1",
                "--timeout-keep-alive",
                "75",
                "--no-server-header",
                "--no-access-log",
                "--log-level",
                "warning",
                "--lifespan",
                "on",
            ],
            env=env,
            log_path=workdir / "gateway.log",
        )
        fake.start()
        stack.callback(fake.stop)
        wait_until_serving(fake, f"http://{LOOPBACK}:{fake_port}/openai/v1/models")

        proxy = stack.enter_context(CaptureProxy(fake_port))
        log("creating the user, token and provider config")
        seeded = run_seed(
            env,
            "setup",
            "--base-url",
            f"http://{LOOPBACK}:{proxy.port}/openai/v1",
            "--api-key",
            PROVIDER_KEY,
            "--model",
            PROVIDER_MODEL,
        )
        gateway.start()
        stack.callback(gateway.stop)
        wait_until_serving(gateway, f"http://{LOOPBACK}:{gateway_port}{STAND_IN_PATH}")
        log(f"gateway pid {gateway.pid} on :{gateway_port}, fake pid {fake.pid} on :{fake_port}")

        aditus = aditus_target(gateway_port, seeded["token"], stand_in=options.stand_in)
        if options.stand_in:
            check_response(aditus, aditus.call())
            provider_body = json.dumps(STAND_IN_PROVIDER_BODY).encode()
            config_id = None
        else:
            provider_body = capture_provider_body(
                env=env, config_id=seeded["config_id"], fake_port=fake_port, proxy=proxy, aditus=aditus
            )
            config_id = seeded["config_id"]
        direct = direct_target(fake_port, provider_body, PROVIDER_KEY)
        check_response(direct, direct.call())

        yield Bench(options, wrk, workdir, gateway, fake, direct, aditus, env, config_id), database


# ---------------------------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Results:
    immediate_one: list[Sample]
    immediate_many: list[Sample]
    slow: dict[int, list[Sample]]
    memory: list[tuple[str, float, float, float]]
    slow_load: dict[int, Load]
    stream: list[Sample] = field(default_factory=list)
    first_delta: dict[str, list[float]] = field(default_factory=dict)  # target -> ms to the first text, per call
    faults: dict = field(default_factory=dict)


def run_scenarios(bench: Bench) -> Results:
    options = bench.options
    one = Load(connections=1, threads=1, duration_s=options.duration_s)
    many = Load(connections=16, threads=options.wrk_threads, duration_s=options.duration_s)
    log("scenario 1: one client, provider answering at once")
    immediate_one = bench.alternate("S1 c1", one)
    log("scenario 2: 16 clients, provider answering at once")
    immediate_many = bench.alternate("S2 c16", many)
    if options.overhead_only:
        return Results(immediate_one, immediate_many, {}, list(bench.memory), {})

    slow_key = f"{PROVIDER_KEY}~latency={SLOW_PROVIDER_MS}"
    bench.set_provider_key(slow_key)
    direct_slow = direct_target(urlsplit(bench.direct.url).port, bench.direct.body or b"", slow_key)
    check_response(direct_slow, direct_slow.call(), min_seconds=SLOW_PROVIDER_MS / 1000 * 0.9)
    if not options.stand_in:
        check_response(bench.aditus, bench.aditus.call(), min_seconds=SLOW_PROVIDER_MS / 1000 * 0.9)
    slow: dict[int, list[Sample]] = {}
    slow_load: dict[int, Load] = {}
    for clients in options.slow_clients:
        load = Load(connections=clients, threads=options.wrk_threads, duration_s=options.slow_duration_s, timeout_s=30)
        log(f"scenario 3: {clients} clients, provider answering after {SLOW_PROVIDER_MS} ms")
        slow[clients] = bench.alternate(f"S3 c{clients}", load, (direct_slow, bench.aditus))
        slow_load[clients] = load
    bench.set_provider_key(PROVIDER_KEY)
    stream, first_delta = run_streaming(bench)
    faults = run_faults(bench)
    return Results(immediate_one, immediate_many, slow, list(bench.memory), slow_load, stream, first_delta, faults)


STREAM_CHUNKS = 20
STREAM_CALLS = 200


def run_streaming(bench: Bench) -> tuple[list[Sample], dict[str, list[float]]]:
    """Scenario 4: a cover letter streamed in STREAM_CHUNKS chunks: gateway CPU per call at 16 clients, and the
    time to the first text at one client, direct (the provider's first content chunk) and through aditus (the
    first `delta` event), alternated call by call."""
    options = bench.options
    key = f"{PROVIDER_KEY}~chunks={STREAM_CHUNKS}"
    bench.set_provider_key(key)
    provider_body = json.loads(bench.direct.body or b"{}")
    provider_body.update(stream=True, stream_options={"include_usage": True})
    direct = Target("direct", "POST", bench.direct.url, json.dumps(provider_body).encode(), {**bench.direct.headers})
    direct.headers["Authorization"] = f"Bearer {key}"
    aditus = Target(
        "aditus",
        "POST",
        bench.aditus.url,
        json.dumps({**COVER_LETTER_REQUEST, "stream": True}).encode(),
        bench.aditus.headers,
    )
    check_response(aditus, aditus.call())
    if aditus.call().body.count(b"event: delta") < STREAM_CHUNKS * 0.9:
        raise HarnessError(f"the stream through aditus did not have about {STREAM_CHUNKS} deltas")
    log(f"scenario 4: a cover letter streamed in {STREAM_CHUNKS} chunks, 16 clients")
    many = Load(connections=16, threads=options.wrk_threads, duration_s=options.duration_s)
    samples = bench.alternate("S4 stream c16", many, (direct, aditus))
    log(f"scenario 4: time to the first text, one client, {STREAM_CALLS} calls each")
    first: dict[str, list[float]] = {"direct": [], "aditus": []}
    # The provider's first text: a chunk whose content is not empty (the role chunk before it has "").
    markers = {"direct": re.compile(rb'"content":"[^"]'), "aditus": re.compile(rb"event: delta")}
    for _ in range(STREAM_CALLS):
        for target in (direct, aditus):
            first[target.name].append(first_text_ms(target, markers[target.name]))
    bench.set_provider_key(PROVIDER_KEY)
    return samples, first


def first_text_ms(target: Target, marker: re.Pattern) -> float:
    """Milliseconds from sending `target`'s request to the first bytes of its stream that match `marker` (the
    first text); the rest of the stream is read to its end."""
    parts = urlsplit(target.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        started = time.perf_counter()
        connection.request(target.method, parts.path, body=target.body, headers=target.headers)
        response = connection.getresponse()
        seen = b""
        while not marker.search(seen):
            chunk = response.read1(65536)
            if not chunk:
                raise HarnessError(f"{target.name}: the stream ended before its first text: {seen[:300]!r}")
            seen += chunk
        elapsed = (time.perf_counter() - started) * 1000
        response.read()
        return elapsed
    finally:
        connection.close()


FAULT_CALLS = 3000
FAULT_CLIENTS = 16
FAULT_TERMINATIONS = 5


def run_faults(bench: Bench) -> dict:
    """Scenario 5: two workers served as `deploy/entrypoint.sh serve` serves them; every connection to the
    database terminated FAULT_TERMINATIONS times during FAULT_CALLS calls from FAULT_CLIENTS clients. Counts what
    the clients got and what the database holds afterwards."""
    import psycopg

    port = free_port()
    env = {**bench.seed_env, "PORT": str(port), "WEB_CONCURRENCY": "2", "PYTHON": sys.executable}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(bench.workdir / "prometheus")
    server = ManagedProcess(
        "gateway (2 workers)",
        [str(ROOT / "deploy" / "entrypoint.sh"), "serve"],
        env=env,
        log_path=bench.workdir / "faults.log",
    )
    server.start()
    try:
        wait_until_serving(server, f"http://{LOOPBACK}:{port}/healthz")
        url = f"http://{LOOPBACK}:{port}{TASK_PATH}"
        body, headers = bench.aditus.body, bench.aditus.headers
        database_url = env["DATABASE_URL"]
        answers: list[tuple[int, str, bytes]] = []
        lock = threading.Lock()
        calls = iter(range(FAULT_CALLS))

        def client() -> None:
            while True:
                with lock:
                    if next(calls, None) is None:
                        return
                try:
                    response = http_call("POST", url, body=body, headers=headers, timeout=60)
                    answer = (response.status, response.headers.get("content-type", ""), response.body)
                except OSError as exc:
                    answer = (0, "", repr(exc).encode())
                with lock:
                    answers.append(answer)

        log(
            f"scenario 5: {FAULT_CALLS} calls, {FAULT_CLIENTS} clients, 2 workers, every database connection "
            f"terminated {FAULT_TERMINATIONS} times"
        )
        with psycopg.connect(database_url, autocommit=True) as admin:
            before = admin.execute("SELECT count(*) FROM usage_usagerecord").fetchone()[0]
            threads = [threading.Thread(target=client) for _ in range(FAULT_CLIENTS)]
            for thread in threads:
                thread.start()
            terminated = []
            for number in range(FAULT_TERMINATIONS):
                while len(answers) < FAULT_CALLS * (number + 1) // (FAULT_TERMINATIONS + 1):
                    time.sleep(0.01)
                terminated.append(
                    admin.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    ).fetchone()[0]
                )
            for thread in threads:
                thread.join()
            served = {json.loads(b)["request_id"] for status, _, b in answers if status == 200}
            deadline = time.monotonic() + 60
            while True:
                saved = {
                    row[0]
                    for row in admin.execute(
                        "SELECT request_id FROM usage_usagerecord WHERE outcome = 'success' AND request_id = ANY(%s)",
                        [list(served)],
                    )
                }
                left = admin.execute("SELECT count(*) FROM usage_tokenreservation").fetchone()[0]
                if (served <= saved and not left) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            after = admin.execute("SELECT count(*) FROM usage_usagerecord").fetchone()[0]
        server.check_alive()
    finally:
        server.stop()
    statuses: dict[str, int] = {}
    for status, _, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "calls": len(answers),
        "terminations": terminated,
        "statuses": statuses,
        "html_errors": sum(1 for status, kind, _ in answers if status >= 500 and "json" not in kind),
        "server_errors": sum(1 for status, _, _ in answers if status >= 500 and status != 503),
        "answered_200": len(served),
        "rows_lost": len(served - saved),
        "rows_written": after - before,
        "reservations_left": left,
    }


# ---------------------------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class Verdict:
    scenario: str
    metric: str
    value: str
    bar: str
    passed: bool


def median_of(samples: list[Sample], target: str, value: Callable[[Sample], float]) -> float:
    values = [value(sample) for sample in samples if sample.target == target]
    return statistics.median(values) if values else float("nan")


def total_errors(samples: list[Sample], target: str) -> int:
    return sum(sample.run.errors for sample in samples if sample.target == target)


def status_summary(samples: list[Sample], target: str) -> str:
    counts: dict[str, int] = {}
    for sample in samples:
        if sample.target == target:
            for status, count in sample.run.statuses.items():
                counts[status] = counts.get(status, 0) + count
    return ", ".join(f"{status}: {count}" for status, count in sorted(counts.items())) or "none"


def result_word(passed: bool) -> str:
    return "**PASS**" if passed else "**FAIL**"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def rounds_table(samples: list[Sample], *, cpu: bool = False) -> list[str]:
    header = ["Round", "Target", "Requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "Errors"]
    if cpu:
        header += ["Gateway CPU ms/req", "Fake CPU ms/req"]
    rows = []
    for sample in samples:
        run = sample.run
        row = [
            str(sample.round),
            sample.target,
            str(run.requests),
            f"{run.rps:.1f}",
            f"{run.p50_ms:.2f}",
            f"{run.p90_ms:.2f}",
            f"{run.p99_ms:.2f}",
            f"{run.max_ms:.2f}",
            str(run.errors),
        ]
        if cpu:
            row += [f"{sample.gateway_cpu_ms_per_request:.2f}", f"{sample.fake_cpu_ms_per_request:.2f}"]
        rows.append(row)
    return ["<details><summary>Every run</summary>", "", *table(header, rows), "</details>", ""]


def report_one_client(samples: list[Sample], verdicts: list[Verdict]) -> list[str]:
    lines = ["## 1. One client, provider answering at once", ""]
    lines.append("`wrk -t1 -c1`; overhead = median through aditus minus median direct.")
    lines.append("")
    errors = total_errors(samples, "aditus") + total_errors(samples, "direct")
    rows = []
    for label, value, bar in (("p50", lambda s: s.run.p50_ms, 3.0), ("p99", lambda s: s.run.p99_ms, 10.0)):
        direct = median_of(samples, "direct", value)
        aditus = median_of(samples, "aditus", value)
        overhead = aditus - direct
        passed = overhead <= bar and errors == 0
        verdicts.append(Verdict("1. one client", f"overhead {label}", f"{overhead:.2f} ms", f"<= {bar:g} ms", passed))
        rows.append(
            [
                f"Latency {label}",
                f"{direct:.2f} ms",
                f"{aditus:.2f} ms",
                f"{overhead:+.2f} ms",
                f"<= {bar:g} ms, 0 errors",
                result_word(passed),
            ]
        )
    rows.append(
        [
            "Throughput",
            f"{median_of(samples, 'direct', lambda s: s.run.rps):.1f} req/s",
            f"{median_of(samples, 'aditus', lambda s: s.run.rps):.1f} req/s",
            "",
            "",
            "",
        ]
    )
    gateway_ms = [s.run.gateway_ms_mean for s in samples if s.target == "aditus" and s.run.gateway_ms_mean is not None]
    rows.append(
        [
            "X-Gateway-Time-Ms (mean)",
            "",
            f"{statistics.median(gateway_ms):.2f} ms" if gateway_ms else "not sent",
            "",
            "",
            "",
        ]
    )
    rows.append(
        [
            "Errors (non-2xx + socket)",
            str(total_errors(samples, "direct")),
            str(total_errors(samples, "aditus")),
            "",
            "",
            "",
        ]
    )
    lines += table(["Metric", "Direct", "Through aditus", "Overhead", "Bar", "Result"], rows)
    return lines + rounds_table(samples)


def report_many_clients(samples: list[Sample], verdicts: list[Verdict]) -> list[str]:
    lines = ["## 2. 16 clients, provider answering at once", ""]
    lines.append(
        "`wrk -c16`; CPU = utime + stime of the server process (all threads) from `/proc/<pid>/stat` over the run, "
        "divided by the requests wrk completed."
    )
    lines.append("")
    cpu = median_of(samples, "aditus", lambda s: s.gateway_cpu_ms_per_request)
    errors = total_errors(samples, "aditus")
    passed = cpu <= 2.0 and errors == 0
    verdicts.append(Verdict("2. 16 clients", "gateway CPU per request", f"{cpu:.2f} ms", "<= 2 ms", passed))
    direct_rps = median_of(samples, "direct", lambda s: s.run.rps)
    aditus_rps = median_of(samples, "aditus", lambda s: s.run.rps)
    rows = [
        ["Gateway CPU per request", "", f"{cpu:.2f} ms", "<= 2 ms, 0 errors", result_word(passed)],
        [
            "Fake provider CPU per request",
            f"{median_of(samples, 'direct', lambda s: s.fake_cpu_ms_per_request):.2f} ms",
            f"{median_of(samples, 'aditus', lambda s: s.fake_cpu_ms_per_request):.2f} ms",
            "reference",
            "",
        ],
        [
            "Gateway CPU use",
            "",
            f"{median_of(samples, 'aditus', lambda s: s.gateway_cpu_s / s.run.duration_s):.2f} cores",
            "",
            "",
        ],
        ["Throughput", f"{direct_rps:.1f} req/s", f"{aditus_rps:.1f} req/s ({aditus_rps / direct_rps:.0%})", "", ""],
        [
            "Latency p50 / p99",
            f"{median_of(samples, 'direct', lambda s: s.run.p50_ms):.2f} / "
            f"{median_of(samples, 'direct', lambda s: s.run.p99_ms):.2f} ms",
            f"{median_of(samples, 'aditus', lambda s: s.run.p50_ms):.2f} / "
            f"{median_of(samples, 'aditus', lambda s: s.run.p99_ms):.2f} ms",
            "",
            "",
        ],
        ["Errors (non-2xx + socket)", str(total_errors(samples, "direct")), str(errors), "", ""],
    ]
    lines += table(["Metric", "Direct", "Through aditus", "Bar", "Result"], rows)
    return lines + rounds_table(samples, cpu=True)


def report_slow(slow: dict[int, list[Sample]], loads: dict[int, Load], verdicts: list[Verdict]) -> list[str]:
    lines = [f"## 3. Provider answering after {SLOW_PROVIDER_MS / 1000:g} s", ""]
    lines.append(
        "Measured throughput = requests wrk completed / run length. With a 1 s provider every client completes "
        "about one request per second, so over a run of D seconds that figure moves in steps of about 1/D; the "
        "latency-derived throughput (clients / mean latency, Little's law for a closed loop) has no steps. "
        "PASS needs both ratios >= 95% and zero errors (responses outside 2xx and socket errors)."
    )
    lines.append("")
    rows = []
    all_samples = []
    for clients, samples in slow.items():
        all_samples += samples
        direct_rps = median_of(samples, "direct", lambda s: s.run.rps)
        aditus_rps = median_of(samples, "aditus", lambda s: s.run.rps)
        direct_mean = median_of(samples, "direct", lambda s: s.run.mean_ms)
        aditus_mean = median_of(samples, "aditus", lambda s: s.run.mean_ms)
        measured = aditus_rps / direct_rps if direct_rps else 0.0
        derived = direct_mean / aditus_mean if aditus_mean else 0.0
        errors = total_errors(samples, "aditus") + total_errors(samples, "direct")
        passed = measured >= 0.95 and derived >= 0.95 and errors == 0
        verdicts.append(
            Verdict(
                f"3. 1 s provider, {clients} clients",
                "throughput vs direct",
                f"{measured:.1%} ({derived:.1%})",
                ">= 95%, 0 errors",
                passed,
            )
        )
        rows.append(
            [
                str(clients),
                f"{loads[clients].duration_s:g} s",
                f"{direct_rps:.1f}",
                f"{aditus_rps:.1f}",
                f"{measured:.1%}",
                f"{derived:.1%}",
                f"{direct_mean:.1f} / {aditus_mean:.1f}",
                f"{median_of(samples, 'aditus', lambda s: s.run.p99_ms):.1f}",
                f"{total_errors(samples, 'direct')} / {total_errors(samples, 'aditus')}",
                f"{median_of(samples, 'aditus', lambda s: s.gateway_cpu_ms_per_request):.2f}",
                ">= 95%, 0 errors",
                result_word(passed),
            ]
        )
    header = [
        "Clients",
        "Run",
        "Direct req/s",
        "aditus req/s",
        "Ratio (measured)",
        "Ratio (latency-derived)",
        "Mean latency ms direct / aditus",
        "aditus p99 ms",
        "Errors direct / aditus",
        "Gateway CPU ms/req",
        "Bar",
        "Result",
    ]
    lines += table(header, rows)
    lines.append(f"Status codes through aditus: {status_summary(all_samples, 'aditus')}.")
    lines.append("")
    return lines + rounds_table(all_samples, cpu=True)


def report_streaming(results: Results, verdicts: list[Verdict]) -> list[str]:
    lines = [f"## 5. A cover letter streamed in {STREAM_CHUNKS} chunks", ""]
    samples = results.stream
    cpu = median_of(samples, "aditus", lambda s: s.gateway_cpu_ms_per_request)
    errors = total_errors(samples, "aditus")
    passed = cpu <= 3.0 and errors == 0
    verdicts.append(
        Verdict("5. stream, 16 clients", "gateway CPU per streamed call", f"{cpu:.2f} ms", "<= 3 ms", passed)
    )
    direct = statistics.median(results.first_delta["direct"])
    aditus = statistics.median(results.first_delta["aditus"])
    late = aditus - direct
    first_passed = late <= 3.0
    verdicts.append(
        Verdict(
            "5. stream, 1 client",
            "first delta after the provider's first chunk, p50",
            f"{late:.2f} ms",
            "<= 3 ms",
            first_passed,
        )
    )
    lines.append(
        f'wrk at 16 clients loads the streamed call (`"stream": true`, the fake splitting the letter into '
        f"{STREAM_CHUNKS} deltas: `~chunks={STREAM_CHUNKS}` in the key) and the same stream straight from the fake. "
        f"Then {STREAM_CALLS} calls each, one at a time, alternated: from sending the request to the first text "
        "(the provider's first content chunk direct; the first `delta` event through aditus)."
    )
    lines.append("")
    lines += table(
        ["Measure", "Direct", "aditus", "Bar", "Result"],
        [
            ["Gateway CPU per call (16 clients)", "", f"{cpu:.2f} ms", "<= 3 ms, 0 errors", result_word(passed)],
            [
                "Time to the first text, p50 (1 client)",
                f"{direct:.2f} ms",
                f"{aditus:.2f} ms (+{late:.2f})",
                "<= 3 ms later",
                result_word(first_passed),
            ],
        ],
    )
    return lines + rounds_table(samples, cpu=True)


def report_faults(faults: dict, verdicts: list[Verdict]) -> list[str]:
    lines = ["## 6. The database drops every connection mid-load", ""]
    passed = (
        faults["rows_lost"] == 0
        and faults["html_errors"] == 0
        and faults["server_errors"] == 0
        and faults["reservations_left"] == 0
        and set(faults["statuses"]) <= {"200", "503"}
    )
    verdicts.append(
        Verdict(
            "6. database faults, 2 workers",
            "rows lost / HTML 5xx / other 5xx / reservations left",
            f"{faults['rows_lost']} / {faults['html_errors']} / {faults['server_errors']} / "
            f"{faults['reservations_left']}",
            "all 0",
            passed,
        )
    )
    lines.append(
        f"`deploy/entrypoint.sh serve` with two workers; {faults['calls']} calls from {FAULT_CLIENTS} clients; every "
        f"session of the database terminated {len(faults['terminations'])} times, spread over the load "
        f"(sessions ended each time: {faults['terminations']}). A call that cannot be prepared while the "
        "database is away answers a JSON 503; every call answered 200 must have its usage row."
    )
    lines.append("")
    lines += table(
        ["Answers by status", "Answered 200", "Rows written", "Rows lost", "HTML 5xx", "Reservations left", "Result"],
        [
            [
                ", ".join(f"{status}: {count}" for status, count in sorted(faults["statuses"].items())),
                str(faults["answered_200"]),
                str(faults["rows_written"]),
                str(faults["rows_lost"]),
                str(faults["html_errors"]),
                str(faults["reservations_left"]),
                result_word(passed),
            ]
        ],
    )
    return lines


def report_memory(memory: list[tuple[str, float, float, float]], verdicts: list[Verdict]) -> list[str]:
    lines = ["## 4. Resident memory", ""]
    lines.append("VmRSS of the gateway process from `/proc/<pid>/status` after each scenario; VmHWM is its peak.")
    lines.append("")
    final = memory[-1][1] if memory else float("nan")
    passed = final <= 200
    verdicts.append(Verdict("4. memory", "gateway VmRSS after the run", f"{final:.1f} MiB", "<= 200 MB", passed))
    rows = [[label, f"{rss:.1f} MiB", f"{peak:.1f} MiB", f"{fake:.1f} MiB"] for label, rss, peak, fake in memory]
    lines += table(["After", "Gateway VmRSS", "Gateway VmHWM", "Fake provider VmRSS"], rows)
    lines.append(f"Bar: gateway VmRSS after the run <= 200 MB: {result_word(passed)} ({final:.1f} MiB).")
    lines.append("")
    return lines


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        head = run_command([git, "rev-parse", "--short", "HEAD"]).strip()
        dirty = run_command([git, "status", "--porcelain", "--untracked-files=no"]).strip()
    except HarnessError:
        return "unknown"
    return f"{head}{' with uncommitted changes' if dirty else ''}"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment_lines(bench: Bench, database: ThrowawayDatabase, started: datetime) -> list[str]:
    options = bench.options
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    rows = [
        ["Date", started.strftime("%Y-%m-%d %H:%M UTC")],
        ["CPU", f"{os.cpu_count()} × {cpu_model()}"],
        ["OS", f"{platform.system()} {platform.release()}"],
        ["Python", platform.python_version()],
        ["Django", package_version("Django")],
        [
            "Server",
            f"uvicorn {package_version('uvicorn')}, 1 process, loop {loop}, http {http_impl}, no access log, "
            f"the options of `deploy/entrypoint.sh serve`",
        ],
        [
            "Gateway settings",
            f"DB_THREADS {os.environ.get('DB_THREADS', '16 (default)')}",
        ],
        ["Database", f"PostgreSQL {database.server_version} (throwaway database, dropped after the run)"],
        ["Fake provider", f"`manage.py fake_providers` (aiohttp {package_version('aiohttp')}), 1 process"],
        ["Load generator", f"{wrk_version(bench.wrk)}, {options.wrk_threads} thread(s)"],
        ["Code", git_revision()],
        [
            "Runs",
            f"{options.rounds} round(s) of direct then aditus per scenario, {options.duration_s:g} s each "
            f"(1 s provider: {options.slow_duration_s:g} s), {options.warmup_s:g} s warm-up per target; medians",
        ],
        [
            "Task request",
            f"`{bench.aditus.method} {urlsplit(bench.aditus.url).path}` ({len(bench.aditus.body or b'')} "
            f"bytes); direct: `POST {OPENAI_PATH}` ({len(bench.direct.body or b'')} bytes)",
        ],
    ]
    return ["## Environment", "", *table(["", ""], rows)]


def render_report(bench: Bench, database: ThrowawayDatabase, results: Results, started: datetime) -> tuple[str, bool]:
    verdicts: list[Verdict] = []
    sections = [
        *report_one_client(results.immediate_one, verdicts),
        *report_many_clients(results.immediate_many, verdicts),
        *(report_slow(results.slow, results.slow_load, verdicts) if results.slow else []),
        *report_memory(results.memory, verdicts),
        *(report_streaming(results, verdicts) if results.stream else []),
        *(report_faults(results.faults, verdicts) if results.faults else []),
    ]
    lines = ["# Gateway benchmark", ""]
    if bench.options.stand_in:
        lines += [
            f"> **STAND-IN RUN**: the aditus side loaded `GET {STAND_IN_PATH}`, not a task endpoint, so it never "
            "called the provider. These numbers exercise the harness only; they say nothing about the bars.",
            "",
        ]
    else:
        lines += [
            f"Direct = the fake provider's `POST {OPENAI_PATH}` called straight; through aditus = "
            f"`POST {TASK_PATH}`, which calls the same fake with the same request body (captured from the gateway "
            "at set-up). The servers and wrk share this machine's cores.",
            "",
        ]
    lines += [
        "## Summary",
        "",
    ]
    lines += table(
        ["Scenario", "Measure", "Value", "Bar", "Result"],
        [[v.scenario, v.metric, v.value, v.bar, result_word(v.passed)] for v in verdicts],
    )
    lines += sections
    lines += environment_lines(bench, database, started)
    return "\n".join(lines).rstrip() + "\n", all(v.passed for v in verdicts)


def raw_results(results: Results) -> dict:
    def dump(samples: list[Sample]) -> list[dict]:
        return [
            {
                **asdict(sample.run),
                "target": sample.target,
                "round": sample.round,
                "rps": sample.run.rps,
                "gateway_cpu_s": sample.gateway_cpu_s,
                "fake_cpu_s": sample.fake_cpu_s,
            }
            for sample in samples
        ]

    return {
        "one_client": dump(results.immediate_one),
        "sixteen_clients": dump(results.immediate_many),
        "slow_provider": {str(clients): dump(samples) for clients, samples in results.slow.items()},
        "stream_sixteen_clients": dump(results.stream),
        "stream_first_text_ms": results.first_delta,
        "database_faults": results.faults,
        "memory_mib": [
            {"after": label, "gateway_rss": rss, "gateway_hwm": peak, "fake_rss": fake}
            for label, rss, peak, fake in results.memory
        ],
    }


# ---------------------------------------------------------------------------------------------------------------


def raise_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str]) -> int:
    options = parse_options(argv)
    raise_on_sigterm()
    started = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="aditus-bench-"))
    ok = False
    try:
        with running_bench(options, workdir) as (bench, database):
            results = run_scenarios(bench)
            report, all_passed = render_report(bench, database, results, started)
            log("tearing down")
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(report)
        options.output.with_suffix(".json").write_text(json.dumps(raw_results(results), indent=2) + "\n")
        print(report)
        log(f"report written to {options.output}")
        ok = True
    except HarnessError as exc:
        log(f"HARNESS FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if ok and not options.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"server logs kept in {workdir}")
    return 2 if options.strict and not all_passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
