"""CORS for browser front ends on other origins: off by default, on for the origins in CORS_ALLOWED_ORIGINS.

The settings are read once per process, so each case runs the real ASGI application (as uvicorn does) in a fresh
interpreter with the environment under test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from aditus.env import env_origins
from tests.aditus.test_settings import GOOD, start

ROOT = Path(__file__).resolve().parents[2]
FRONT_END = "http://localhost:3000"

# Each request: (name, method, path, headers). Preflights carry Access-Control-Request-Method.
PROBE = r"""
import json, sys
from aditus.asgi import application
from tests.asgi import http_scope, asgi_request

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
requests = [
    ("task preflight", "OPTIONS", "/api/v1/cv-drafter/draft", {"Origin": sys.argv[1], **PREFLIGHT}),
    ("api preflight", "OPTIONS", "/api/v1/super-admin/providers/configs", {"Origin": sys.argv[1], **PREFLIGHT}),
    ("api call", "GET", "/api/v1/super-admin/providers/configs", {"Origin": sys.argv[1]}),
    ("task call", "POST", "/api/v1/cv-drafter/draft", {"Origin": sys.argv[1]}),
    ("admin", "GET", "/admin/login/", {"Origin": sys.argv[1]}),
]
answers = {}
for name, method, path, headers in requests:
    status, response_headers, _ = asgi_request(application, http_scope(path, method=method, headers=headers), b"{}")
    answers[name] = {"status": status, **{k: v for k, v in response_headers.items() if k.startswith("access-control")}}
print(json.dumps(answers))
"""


def probe(origin: str, tmp_path, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, origin],
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"],
            "ADITUS_ENV_FILE": "/dev/null",
            "DJANGO_SETTINGS_MODULE": "aditus.settings",
            "DEBUG": "1",
            "ALLOWED_HOSTS": "testserver",
            "FIELD_ENCRYPTION_KEYS": GOOD["FIELD_ENCRYPTION_KEYS"],
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cors_is_off_by_default(tmp_path):
    answers = probe(FRONT_END, tmp_path)

    for name, answer in answers.items():
        assert "access-control-allow-origin" not in answer, name


def test_an_allowed_origin_gets_preflights_and_answers_on_the_api_only(tmp_path):
    answers = probe(FRONT_END, tmp_path, CORS_ALLOWED_ORIGINS=f"https://app.example.com, {FRONT_END}")

    for name in ("task preflight", "api preflight"):
        assert answers[name]["status"] == 200, name
        assert answers[name]["access-control-allow-origin"] == FRONT_END
        assert "authorization" in answers[name]["access-control-allow-headers"]
        assert "POST" in answers[name]["access-control-allow-methods"]
    for name in ("api call", "task call"):
        assert answers[name]["status"] == 401, name  # the browser may read the refusal, with its request id
        assert answers[name]["access-control-allow-origin"] == FRONT_END
        assert "X-Request-ID" in answers[name]["access-control-expose-headers"]
        assert "access-control-allow-credentials" not in answers[name]
    assert "access-control-allow-origin" not in answers["admin"]


def test_an_origin_not_listed_gets_no_cors_headers(tmp_path):
    answers = probe("https://evil.example", tmp_path, CORS_ALLOWED_ORIGINS=FRONT_END)

    for name, answer in answers.items():
        assert "access-control-allow-origin" not in answer, name


@pytest.mark.parametrize(
    "value", ["*", "localhost:3000", "https://app.example.com/", "https://app.example.com/path", "ftp://files.example"]
)
def test_a_value_that_is_not_an_origin_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", value)

    with pytest.raises(ImproperlyConfigured, match="CORS_ALLOWED_ORIGINS: .* is not an origin"):
        env_origins("CORS_ALLOWED_ORIGINS")


def test_start_up_stops_on_a_bad_origin():
    result = start(DEBUG="0", **GOOD, CORS_ALLOWED_ORIGINS="https://app.example.com/")

    assert result.returncode != 0
    assert "CORS_ALLOWED_ORIGINS: 'https://app.example.com/' is not an origin" in result.stderr
