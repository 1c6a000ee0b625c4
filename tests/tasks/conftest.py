"""Fixtures for the task endpoint tests: provider configs pointing at the fake providers, and a way to call the
endpoints through Django's AsyncClient from sync tests (the views run their database work in the event loop's
thread pool, so these tests use `django_db(transaction=True)`)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from tests.auth_fixtures import bearer

# The views write from the event loop's thread pool, so the tests need real commits (transaction=True). Naming the
# apps involved makes each test's flush truncate only their tables and skip re-running post_migrate.
db_with_threads = pytest.mark.django_db(
    transaction=True,
    available_apps=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django_otp",
        "django_otp.plugins.otp_totp",
        "aditus",
        "providers",
        "usage",
        "tasks",
    ],
)

EXTRACT = "/api/v1/job-extractor/extract"
VALIDATE_IMAGE = "/api/v1/job-extractor/validate-image"
CV_DRAFT = "/api/v1/cv-drafter/draft"
COVER_LETTER = "/api/v1/cover-letter/generate"

ALL_TASKS = ("extraction", "image_validation", "cv_drafting", "cover_letter")
# Per provider: a model the fake knows and a key it accepts.
PROVIDERS = {
    "openai": ("gpt-4o-mini", "sk-test-tasks-{n:04d}"),
    "claude": ("claude-haiku-4-5", "sk-ant-test-tasks-{n:04d}"),
    "gemini": ("gemini-2.0-flash", "AIzaTest-tasks-{n:04d}"),
}


@pytest.fixture
def task_config(db, fake_providers):
    """A factory of configs served by the fake: `task_config("claude", tasks=("extraction",), key_suffix="~fail=429",
    priority=10, weight=3, daily_token_limit=100, ...)`."""
    from providers.models import TASK_FLAGS, ProviderConfig

    numbers = itertools.count(1)
    base_urls = {
        "openai": fake_providers.openai_base_url,
        "claude": fake_providers.anthropic_base_url,
        "gemini": fake_providers.gemini_base_url,
    }

    def make(provider: str = "openai", *, tasks=ALL_TASKS, key_suffix: str = "", key: str | None = None, **fields):
        number = next(numbers)
        model, key_pattern = PROVIDERS[provider]
        values = {
            "provider_type": provider,
            "display_name": f"{provider} {number}",
            "model_name": model,
            "base_url": base_urls[provider],
            **{TASK_FLAGS[task]: True for task in tasks},
            **fields,
        }
        config = ProviderConfig(**values)
        config.set_api_key(key if key is not None else key_pattern.format(n=number) + key_suffix)
        config.save()
        return config

    return make


@pytest.fixture
def auth(ordinary_user_token) -> dict[str, str]:
    """Headers that authenticate as the ordinary user."""
    return {"Authorization": bearer(ordinary_user_token)["HTTP_AUTHORIZATION"]}


def call(path: str, data: Any = None, **kwargs):
    """POST through Django's AsyncClient, in an event loop of its own that serves its statements from a pool, as
    under uvicorn (`runtime.db.pooled`); see `acall`."""
    from runtime import db

    async def pooled_call():
        async with db.pooled():
            return await acall(path, data, **kwargs)

    return asyncio.run(pooled_call())


async def acall(path: str, data: Any = None, *, headers=None, multipart: bool = False, client=None, **kwargs):
    """POST `data` as JSON (or as multipart form data) and return the response; a streaming response's body is
    read into `response.body`."""
    from django.test import AsyncClient

    client = client or AsyncClient()
    if not multipart:
        kwargs.setdefault("content_type", "application/json")
    response = await client.post(path, data if data is not None else {}, headers=headers or {}, **kwargs)
    if response.streaming:
        response.body = b"".join([chunk async for chunk in response.streaming_content])
    return response


def sse_events(body: bytes) -> list[tuple[str, dict]]:
    """Parse a Server-Sent Events body into (event, data) pairs."""
    import json

    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def usage_rows(**filters) -> list:
    from usage.models import UsageRecord

    return list(UsageRecord.objects.filter(**filters).order_by("request_id", "attempt"))


@pytest.fixture(autouse=True)
def _thread_work_done_before_the_next_test():
    """Work a test's calls left running in the database threads (a sweep of expired reservations started in the
    background) ends before the next test touches the database: on SQLite's shared-cache test database a second
    writer fails at once instead of waiting."""
    yield
    from runtime import threads

    threads.executor().submit(lambda: None).result(timeout=30)


@pytest.fixture(scope="session", autouse=True)
def _release_thread_pool_connections(django_db_setup):
    """Let the test database be dropped at the end: the views' database threads each opened a connection, which
    goes when the thread has stopped and the garbage collector has run; and
    the middleware run by AsyncClient uses asgiref's long-lived thread for sync work, whose connection stays open."""
    yield
    import gc

    from asgiref.sync import SyncToAsync
    from django.db import connections

    from runtime import threads

    threads.shutdown()  # the database threads' connections close as they stop
    gc.collect()
    executor = getattr(SyncToAsync, "single_thread_executor", None)
    if executor is not None:
        executor.submit(connections.close_all).result()
