"""Schemathesis against the running server's own schema, as a verified super-admin and as an ordinary user.

The real server (uvicorn, `aditus.asgi:application`) runs in a subprocess on a database of its own, with provider
configs pointing at the fake providers. Every operation of /api/schema/ is called with generated input, valid and
invalid; each response must have a documented status, media type, headers and body, and no 5xx may come from
aditus itself. (502/503/504 from a task endpoint are documented answers about the providers: they pass when they
match their schema.)

The server may reach loopback only: it runs behind a guard that refuses to resolve or connect to anything else,
since a fuzzed provider config can name any base URL. Set SKIP_FUZZ=1 to skip this module; CI runs it.
FUZZ_EXAMPLES sets the examples per operation and mode (valid or invalid input), FUZZ_SEED other inputs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("SKIP_FUZZ") == "1", reason="SKIP_FUZZ=1")

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402
from schemathesis.transport.serialization import Binary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("FUZZ_SEED", "")
PASSWORD = "Fuzzy-Harbour-Lantern-58"
# Throwaway tokens for the logout operation, which revokes the token it is called with (schemathesis calls an
# operation more often than its examples: it replays some requests without or with broken credentials).
SPARE_TOKENS = 400 + 16 * EXAMPLES
# Seeded configs get ids far from the small integers the fuzzer favours, so that its deletes rarely hit them.
SEED_PK = 9_000_001
FAKE_MODELS = {
    "openai": ("gpt-4o-mini", "sk-fuzz-0001", "openai_base_url"),
    "claude": ("claude-haiku-4-5", "sk-ant-fuzz-0001", "anthropic_base_url"),
    "gemini": ("gemini-2.0-flash", "AIzaFuzz-0001", "gemini_base_url"),
}
DIGITS = re.compile(r"[0-9]+")
CONFIG_WRITES = {"provider_config_create", "provider_config_update", "provider_settings_test"}


# --- in the server's process ------------------------------------------------------------------------------------


def _loopback(host) -> bool:
    if host is None:
        return True  # binding to the wildcard address
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def allow_loopback_only() -> None:
    """Refuse to resolve or connect to anything but loopback in this process."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not _loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"the fuzz server reaches loopback only, not {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def checked(sock, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise ConnectionRefusedError(f"the fuzz server reaches loopback only, not {address[0]!r}")

    def connect(self, address):
        checked(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        checked(self, address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex


def serve(port: int) -> None:
    """Run the real ASGI application, as production does, behind the loopback guard."""
    allow_loopback_only()
    import uvicorn

    # The asyncio loop: uvloop resolves and connects in C, past the guard.
    uvicorn.run("aditus.asgi:application", host="127.0.0.1", port=port, loop="asyncio", lifespan="on")


def seed_server(fake_urls: dict[str, str]) -> None:
    """Create the users, tokens and fake-provider configs; print what the tests need as JSON."""
    from django.contrib.auth import get_user_model
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from aditus.services import api_token_issue
    from providers.models import TASK_FLAGS, ProviderConfig

    users = get_user_model().objects
    admin = users.create_superuser("fuzz-admin", "fuzz-admin@example.com", PASSWORD)
    device = TOTPDevice.objects.create(user=admin, name="Authenticator app", confirmed=True)
    user = users.create_user("fuzz-user", "fuzz-user@example.com", PASSWORD)
    for number, (provider, (model, key, _)) in enumerate(FAKE_MODELS.items()):
        config = ProviderConfig(
            pk=SEED_PK + number,
            provider_type=provider,
            display_name=f"fake {provider}",
            model_name=model,
            base_url=fake_urls[provider],
            **dict.fromkeys(TASK_FLAGS.values(), True),
        )
        config.set_api_key(key)
        config.save()
    print(
        json.dumps(
            {
                "admin": api_token_issue(user=admin, otp_device=device)[1],
                "user": api_token_issue(user=user, otp_device=None)[1],
                "spare": [api_token_issue(user=user, otp_device=None)[1] for _ in range(SPARE_TOKENS)],
            }
        )
    )


# --- in the test process ----------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    log: Path
    tokens: dict
    fake_urls: dict[str, str]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _database():
    """A database URL of the server's own: a new PostgreSQL database when the suite runs on PostgreSQL (where
    strings with NUL characters, say, fail differently), else an SQLite file."""
    from django.conf import settings as django_settings

    default = django_settings.DATABASES["default"]
    if "postgresql" not in default["ENGINE"]:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"aditus-fuzz-{secrets.token_hex(4)}.sqlite3"
        try:
            yield f"sqlite:///{path}"
        finally:
            path.unlink(missing_ok=True)
        return
    import psycopg

    name = f"aditus_fuzz_{secrets.token_hex(4)}"
    user, password = default.get("USER") or "postgres", default.get("PASSWORD") or ""
    host, port = default.get("HOST") or "127.0.0.1", default.get("PORT") or 5432
    admin_url = f"postgresql://{user}:{password}@{host}:{port}/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}:{password}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fuzz_server(fake_providers, tmp_path_factory):
    fake_urls = {provider: getattr(fake_providers, attribute) for provider, (_, _, attribute) in FAKE_MODELS.items()}
    with _database() as database_url:
        # The token endpoint's throttle would answer most fuzzed logins with a 429 before their body is read.
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DEBUG": "1",
            "LOG_LEVEL": "WARNING",
            "AUTH_THROTTLE_RATE": "100000/min",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        python = [sys.executable]
        migrate = [*python, "manage.py", "migrate", "--noinput"]
        subprocess.run(migrate, cwd=ROOT, env=env, check=True, capture_output=True)
        code = f"from tests.test_fuzz import seed_server; seed_server({fake_urls!r})"
        seeded = subprocess.run(
            [*python, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        tokens = json.loads(seeded.stdout.strip().splitlines()[-1])
        port = _free_port()
        log = tmp_path_factory.mktemp("fuzz") / "server.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [*python, "-c", f"from tests.test_fuzz import serve; serve({port})"],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        server = Server(url=f"http://127.0.0.1:{port}", log=log, tokens=tokens, fake_urls=fake_urls)
        try:
            _wait_until_up(server, process)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(server: Server, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.log_tail()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.url}/healthz", timeout=2) as response,  # noqa: S310 (loopback)
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"the server did not answer /healthz in time:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(
        f"{fuzz_server.url}/api/schema/?format=json",
        headers={"Authorization": f"Bearer {fuzz_server.tokens['user']}"},
    )


def _aditus_server_error(server: Server):
    """No 5xx that the operation does not document (a 500 never is), with the server's log to say why."""

    def no_undocumented_server_error(ctx, response, case) -> None:
        status = response.status_code
        if status >= 500 and str(status) not in case.operation.definition.raw.get("responses", {}):
            raise AssertionError(f"{status} from {case.operation.label}\n--- server log ---\n{server.log_tail()}")

    return no_undocumented_server_error


@functools.cache
def _png() -> bytes:
    from PIL import Image

    output = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(output, format="PNG")
    return output.getvalue()


def _prepare(case, server: Server) -> None:
    """Give some image requests a real image, and keep fuzzed provider configs on the fake providers.

    Valid bodies only: an invalid one is refused before anything is used.
    """
    operation_id = case.operation.definition.raw.get("operationId")
    body = case.body
    if not isinstance(body, dict) or case.meta is None or not case.meta.generation.mode.is_positive:
        return
    image = body.get("image")
    if operation_id == "job_image_validate" and isinstance(image, Binary) and len(image.data) % 2 == 0:
        body["image"] = Binary(_png())  # about half the valid requests carry a real image, to reach the providers
    elif operation_id in CONFIG_WRITES:
        body["base_url"] = server.fake_urls.get(body.get("provider_type"), server.fake_urls["openai"])
    elif operation_id == "provider_config_partial_update":
        body.pop("base_url", None)


def _call_and_check(case, server: Server, token: str) -> None:
    operation_id = case.operation.definition.raw.get("operationId")
    if operation_id == "auth_logout":
        token = server.tokens["spare"].pop()  # logging out revokes the token: never the one the others use
    headers = {} if operation_id == "auth_token_obtain" else {"Authorization": f"Bearer {token}"}
    _prepare(case, server)
    response = case.call(base_url=server.url, headers=headers, timeout=60)
    if any(not DIGITS.fullmatch(str(value)) for value in (case.path_parameters or {}).values()):
        # An invalid id makes a URL that no route matches (Django's <int:> is digits only): not an operation.
        assert response.status_code == 404, f"{response.status_code} from {response.request.url}"
        return
    case.validate_response(
        response,
        # Positive data may still be refused for what a schema cannot say (a duplicate name, a total length),
        # and documented 5xx are the providers' failures: the check below stands in for not_a_server_error.
        excluded_checks=[not_a_server_error, positive_data_acceptance],
        additional_checks=[_aditus_server_error(server)],
        headers=headers,
    )


FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _fuzz(schema, server: Server, identity: str) -> None:
    """Every operation, with valid and then invalid input; report every operation that fails, not just the first."""
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18, [operation.label for operation in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Seeded, so that a run in CI repeats; FUZZ_SEED explores other inputs.
            @seed(zlib.crc32(f"{SEED} {identity} {operation.label} {mode.value}".encode()))
            @FUZZ_SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                _call_and_check(case, server, server.tokens[identity])

            try:
                run()
            except Unsatisfiable:
                continue  # nothing to make invalid: the probes and /metrics take no input
            except (Exception, BaseExceptionGroup) as error:  # schemathesis' FailureGroup is a BaseExceptionGroup
                notes = "\n".join(getattr(error, "__notes__", []))
                failures.append(f"=== {operation.label} ({mode.value}) ===\n{error}\n{notes}")
    assert not failures, "\n\n".join(failures)
    # A failure the client never sees (one logged after a stream's headers went out, say) counts too.
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail(200)


# --- hostile input: what a schema does not generate ----------------------------------------------------------------

# Strings that are not text (lone surrogates), control characters (CR/LF, NUL, escapes), digits that are digits only
# to str.isdigit(), and paths; JSON numbers no field can hold; nesting past any limit.
LONE_SURROGATES = st.sampled_from(["\ud800", "\udfff", "cut in an emoji \ud83d", "\udc00 starts badly"])
ODD_TEXT = st.text(st.characters(categories=["Cs", "Cc", "Cf", "No", "Nd", "Zl", "Zp"]), min_size=1, max_size=16)
NAMED_TEXT = st.sampled_from(
    ["\r\nX-Injected: 1", "\x00", "\x1b[31m", "../../../admin", "models/../x", "\u00b2", "\u0661\u0662", " ", ""]
)
HOSTILE_TEXT = st.one_of(LONE_SURROGATES, ODD_TEXT, NAMED_TEXT)
HUGE_NUMBERS = st.sampled_from(
    ["1e400", "-1e400", "1" + "0" * 400, "9" * 5000, "9223372036854775808", "-9223372036854775809", "0.1e-400"]
)
DEEP = st.one_of(
    st.integers(33, 200_000).map(lambda n: "[" * n + "]" * n),
    st.integers(33, 5_000).map(lambda n: '{"a": ' * n + "1" + "}" * n),
)
# A raw JSON value (surrogates escaped as \udXXX, as a browser's JSON.stringify sends them).
HOSTILE_VALUE = st.one_of(HOSTILE_TEXT.map(json.dumps), HUGE_NUMBERS, DEEP, HOSTILE_TEXT.map(lambda t: json.dumps([t])))

# A valid body per operation, so that a hostile field is judged after the required ones are there.
VALID_BODIES = {
    "auth_token_obtain": {"username": "fuzz-user", "password": PASSWORD},
    "provider_config_create": {
        "provider_type": "openai",
        "display_name": "hostile",
        "model_name": "gpt-4o-mini",
        "api_key": "sk-fuzz-0001",
    },
    "provider_config_update": {
        "provider_type": "openai",
        "display_name": "fake openai",
        "model_name": "gpt-4o-mini",
        "api_key": "sk-fuzz-0001",
    },
    "provider_config_partial_update": {"display_name": "fake openai"},
    "provider_settings_test": {"provider_type": "openai", "model_name": "gpt-4o-mini", "api_key": "sk-fuzz-0001"},
    "job_extract": {"text": "Baker wanted in Lyon."},
    "cv_draft": {"profile": "Ten years of baking.", "job": "Baker"},
    "cover_letter_generate": {"profile": "Ten years of baking.", "job": "Baker"},
}
HOSTILE_QUERIES = {"usage_stats": ["config", "days", "end", "group_by", "model", "provider", "start", "task", "user"]}


def _raw_json(body: dict, hostile: dict[str, str]) -> bytes:
    """`body` as JSON text, with the `hostile` fields' raw JSON values in place of (or besides) its own."""
    fields = {name: json.dumps(value) for name, value in body.items()} | hostile
    text = "{" + ", ".join(f"{json.dumps(name)}: {value}" for name, value in fields.items()) + "}"
    return text.encode("utf-8", "surrogatepass")


def _exchange(server: Server, request_head: bytes, parts: list[bytes] = ()) -> tuple[int, bytes]:
    """Send a request (its head, then the body `parts`), stopping as soon as the server answers; return the status
    and the answer. A server that answers before the body is in may close the connection under the sender."""
    import select
    from urllib.parse import urlsplit

    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
        sock.sendall(request_head)
        for part in parts:
            if select.select([sock], [], [], 0)[0]:
                break  # answered already
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(60)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer) < 16:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12]), answer


def _head(method: str, path: str, token: str | None, extra: str) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}\r\n".encode()


def _operations(schema) -> list[tuple[str, str, dict]]:
    return [
        (method.upper(), path, operation)
        for path, item in schema.raw_schema["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    ]


def _documented(operation: dict, status: int) -> bool:
    return str(status) in operation.get("responses", {})


def _hostile_fuzz(schema, server: Server, identity: str) -> None:
    """Every operation that takes a JSON body or a query, with hostile values in its fields, and every operation
    that takes a body, with one over the limit (declared, and streamed without a length): only documented answers,
    never a 5xx of our own."""
    failures: list[str] = []
    for method, path_template, operation in _operations(schema):
        _hostile_operation(server, identity, method, path_template.replace("{id}", str(SEED_PK)), operation, failures)
    assert not failures, "\n\n".join(failures)
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail(200)


def _hostile_operation(server: Server, identity: str, method: str, path: str, operation: dict, failures: list) -> None:
    operation_id = operation["operationId"]
    token = server.tokens[identity]
    sender = None if operation_id == "auth_token_obtain" else token

    def check(status: int, answer: bytes, what: str) -> None:
        if status >= 500 and not (status in (502, 503, 504) and _documented(operation, status)):
            failures.append(f"{status} from {method} {path} with {what}:\n{answer[:600]!r}")
        elif not _documented(operation, status) and status != 404:
            failures.append(f"undocumented {status} from {method} {path} with {what}:\n{answer[:600]!r}")

    if operation_id in VALID_BODIES:
        body = VALID_BODIES[operation_id]
        if operation_id in CONFIG_WRITES | {"provider_config_update"}:
            body = {**body, "base_url": server.fake_urls["openai"]}  # keep configs on the fake providers
        names = st.sampled_from([*body, "extra"]) | HOSTILE_TEXT.filter(lambda text: text not in body)

        @seed(zlib.crc32(f"{SEED} {identity} hostile {operation_id}".encode()))
        @FUZZ_SETTINGS
        @given(hostile=st.dictionaries(names, HOSTILE_VALUE, min_size=1, max_size=2))
        def run(hostile):
            raw = _raw_json(body, {json.dumps(name)[1:-1]: value for name, value in hostile.items()})
            extra = f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
            status, answer = _exchange(server, _head(method, path, sender, extra) + raw)
            check(status, answer, f"hostile fields {sorted(hostile)!r}")

        run()
    if operation_id in HOSTILE_QUERIES:
        from urllib.parse import quote

        values = st.one_of(HOSTILE_TEXT, HUGE_NUMBERS)

        @seed(zlib.crc32(f"{SEED} {identity} hostile query {operation_id}".encode()))
        @FUZZ_SETTINGS
        @given(query=st.dictionaries(st.sampled_from(HOSTILE_QUERIES[operation_id]), values, min_size=1, max_size=3))
        def run_query(query):
            encoded = "&".join(
                f"{name}={quote(value.encode('utf-8', 'surrogatepass'), safe='')}" for name, value in query.items()
            )
            status, answer = _exchange(server, _head(method, f"{path}?{encoded}", token, ""))
            check(status, answer, f"hostile query {encoded}")

        run_query()
    if "requestBody" in operation:
        media_type = next(iter(operation["requestBody"]["content"]))
        declared = f"Content-Type: {media_type}\r\nContent-Length: {300 * 1024 * 1024}\r\n"
        status, answer = _exchange(server, _head(method, path, sender, declared), [b"{" * 65536])
        check(status, answer, "a declared 300 MB body")
        if status != 413:
            failures.append(f"{status}, not 413, from {method} {path} for a declared 300 MB body")
        streamed = f"Content-Type: {media_type}\r\nTransfer-Encoding: chunked\r\n"
        chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
        status, answer = _exchange(server, _head(method, path, sender, streamed), [chunk] * 200)
        check(status, answer, "a 13 MB body streamed without a length")
        if status != 413:
            failures.append(f"{status}, not 413, from {method} {path} for a 13 MB streamed body")


def test_an_ordinary_user_gets_only_documented_answers_to_hostile_input(fuzz_server, api_schema):
    _hostile_fuzz(api_schema, fuzz_server, "user")


def test_a_verified_superadmin_gets_only_documented_answers_to_hostile_input(fuzz_server, api_schema):
    _hostile_fuzz(api_schema, fuzz_server, "admin")


def test_an_ordinary_user_gets_only_documented_answers(fuzz_server, api_schema):
    _fuzz(api_schema, fuzz_server, "user")


def test_a_verified_superadmin_gets_only_documented_answers(fuzz_server, api_schema):
    _fuzz(api_schema, fuzz_server, "admin")
