"""Request ids and JSON logs."""

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import iscoroutinefunction
from cryptography.fernet import Fernet
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse
from django.test import RequestFactory

from aditus.logging import JsonFormatter, RequestIdFilter, current_request_id
from aditus.middleware import RequestIdMiddleware

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("tests.request")


@pytest.fixture
def json_log():
    """A handler like production's (LOG_FORMAT=json); call the fixture's value for the parsed lines so far."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)


def view_that_logs(request):
    logger.info("handling %s", request.path)
    return HttpResponse(current_request_id())


async def async_view_that_logs(request):
    logger.info("handling %s", request.path)
    # Let the other requests of the test run in between: each must keep its own id.
    await asyncio.sleep(0.01)
    logger.info("done with %s", request.path)
    return HttpResponse(current_request_id())


@pytest.mark.parametrize("incoming", ["front-end:42.a_b-c", "7f9c2ba4e88f827d616045507605853e", "a" * 64])
def test_a_sane_incoming_request_id_is_kept(incoming):
    response = RequestIdMiddleware(view_that_logs)(RequestFactory().get("/x", HTTP_X_REQUEST_ID=incoming))

    assert response["X-Request-ID"] == incoming == response.content.decode()


@pytest.mark.parametrize("incoming", ["a" * 65, "a b", "id\tInjected", "<script>", "-leading-dash", "", "ünïcode"])
def test_any_other_request_id_is_replaced_by_a_new_one(incoming):
    response = RequestIdMiddleware(view_that_logs)(RequestFactory().get("/x", HTTP_X_REQUEST_ID=incoming))

    generated = response["X-Request-ID"]
    assert generated != incoming and len(generated) == 32 and int(generated, 16) >= 0
    assert response.content.decode() == generated


def test_every_request_without_an_id_gets_a_different_one():
    middleware = RequestIdMiddleware(view_that_logs)

    assert len({middleware(RequestFactory().get("/x"))["X-Request-ID"] for _ in range(5)}) == 5


def test_a_request_id_set_by_the_view_is_left_alone():
    def view(request):
        response = HttpResponse()
        response["X-Request-ID"] = "chosen-by-the-view"
        return response

    response = RequestIdMiddleware(view)(RequestFactory().get("/x", HTTP_X_REQUEST_ID="from-caller"))

    assert response["X-Request-ID"] == "chosen-by-the-view"


def test_every_json_line_of_a_request_carries_its_id_and_none_outlives_it(json_log):
    middleware = RequestIdMiddleware(view_that_logs)
    middleware(RequestFactory().get("/first", HTTP_X_REQUEST_ID="req-1"))
    middleware(RequestFactory().get("/second", HTTP_X_REQUEST_ID="req-2"))
    logger.warning("between requests")

    first, second, between = json_log()
    assert (first["message"], first["request_id"]) == ("handling /first", "req-1")
    assert (second["message"], second["request_id"]) == ("handling /second", "req-2")
    # A WSGI thread serves one request after another: nothing of the last one may stay behind.
    assert between["request_id"] is None and current_request_id() is None
    assert set(first) == {"time", "level", "logger", "message", "request_id"}
    assert (first["level"], first["logger"]) == ("INFO", "tests.request")
    assert first["time"].endswith("+00:00") and "T" in first["time"]


def test_an_exception_is_logged_as_one_json_line_with_its_traceback_as_a_string(json_log):
    def failing_view(request):
        try:
            {}["missing"]
        except KeyError:
            logger.exception("could not handle it")
        return HttpResponse()

    RequestIdMiddleware(failing_view)(RequestFactory().get("/x", HTTP_X_REQUEST_ID="req-err"))

    [line] = json_log()
    assert line["level"] == "ERROR" and line["request_id"] == "req-err"
    assert line["exc_info"].startswith("Traceback") and "KeyError: 'missing'" in line["exc_info"]


def test_the_middleware_is_async_under_asgi_and_keeps_concurrent_requests_apart(json_log):
    middleware = RequestIdMiddleware(async_view_that_logs)
    assert iscoroutinefunction(middleware)

    async def three_requests():
        factory = RequestFactory()
        return await asyncio.gather(
            *(middleware(factory.get(f"/r{n}", HTTP_X_REQUEST_ID=f"req-{n}")) for n in range(3))
        )

    responses = asyncio.run(three_requests())

    assert [r["X-Request-ID"] for r in responses] == ["req-0", "req-1", "req-2"]
    assert [r.content.decode() for r in responses] == ["req-0", "req-1", "req-2"]
    lines = json_log()
    assert len(lines) == 6
    for line in lines:
        assert line["message"].endswith(f"/r{line['request_id'][-1]}")
    # Interleaved: the second request logged before the first had finished.
    assert [line["request_id"] for line in lines[:3]] == ["req-0", "req-1", "req-2"]


def test_no_middleware_of_the_stack_forces_a_thread_hop_under_asgi(settings, caplog):
    # Django adapts (and logs, with DEBUG) each middleware that cannot run in the mode of the handler it wraps:
    # under ASGI, one sync-only middleware sends every request to a thread and back.
    settings.DEBUG = True
    with caplog.at_level(logging.DEBUG, logger="django.request"):
        ASGIHandler()

    adapted = [record.getMessage() for record in caplog.records if "adapted" in record.getMessage()]
    assert adapted == []


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "aditus.settings",
        "DEBUG": "1",
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_log_format_json_switches_the_console_to_one_json_object_per_line():
    result = run_python(
        "import django, logging; django.setup()\n"
        "logging.getLogger('aditus.example').info('plain %s', 'text')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    logging.getLogger('aditus.example').exception('failed')\n",
        LOG_FORMAT="json",
    )

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["logger"], line["message"], line["request_id"]) for line in lines] == [
        ("aditus.example", "plain text", None),
        ("aditus.example", "failed", None),
    ]
    assert "ZeroDivisionError" in lines[1]["exc_info"]


def test_plain_logs_show_the_request_id_too():
    result = run_python(
        "import django, logging; django.setup()\n"
        "from aditus.logging import request_id_bind\n"
        "request_id_bind('req-plain')\n"
        "logging.getLogger('aditus.example').warning('hello')\n"
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr.rstrip().endswith("WARNING aditus.example [req-plain] hello")


def test_an_unknown_log_format_stops_start_up_naming_the_variable():
    result = run_python("import django; django.setup()", LOG_FORMAT="xml")

    assert result.returncode != 0
    assert "LOG_FORMAT must be plain or json, got 'xml'" in result.stderr
