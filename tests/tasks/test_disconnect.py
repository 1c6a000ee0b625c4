"""A client that goes away still leaves a usage row: driven at the ASGI level, as uvicorn drives Django.

The ASGI `receive` hands over the request body, then answers `http.disconnect` at the moment the test picks;
Django's handler then cancels the view (or the streaming body) as it does in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import OperationalError

from providers.fake.generation import reply_text, stream_pieces
from tasks import prompts
from tests.asgi import asgi_exchange, http_scope
from tests.tasks.conftest import COVER_LETTER, CV_DRAFT, db_with_threads, usage_rows

pytestmark = db_with_threads

LETTER = {"profile": "Ada Lovelace, Python developer.", "job": "Backend engineer at Acme."}


async def asgi_post(path: str, data: dict, token: str, *, disconnect_when) -> list[dict]:
    """POST through Django's ASGI handler; `disconnect_when(message, sent)` decides, for each message the app
    sends, whether the client goes away now (then `send` blocks, as a socket with a full buffer would)."""
    body = json.dumps(data).encode()
    scope = http_scope(path, headers={"Content-Length": str(len(body)), "Authorization": f"Bearer {token}"})
    return await asgi_exchange(ASGIHandler(), scope, body, disconnect_when=disconnect_when)


async def wait_for_rows(count: int, timeout: float = 5.0, **filters) -> list:
    rows = []
    for _ in range(int(timeout / 0.02)):
        # SQLite's in-memory test database refuses a read while the row is being written.
        with contextlib.suppress(OperationalError):
            rows = await sync_to_async(usage_rows, thread_sensitive=False)(**filters)
        if len(rows) >= count:
            break
        await asyncio.sleep(0.02)
    return rows


def first_delta(message: dict, sent: list[dict]) -> bool:
    return message["type"] == "http.response.body" and b"event: delta" in message.get("body", b"")


def prompt_estimate(user_text: str, system: str) -> int:
    return math.ceil(len(system) / 4) + math.ceil(len(user_text) / 4)


def test_a_client_that_leaves_while_the_provider_streams_leaves_an_aborted_row(task_config, ordinary_user_token):
    # The fake streams its first delta, then stalls: the client leaves while the gateway awaits the provider.
    from usage.models import TokenCounter

    config = task_config("openai", key_suffix="~stall=5000", daily_token_limit=1_000_000)

    async def scenario():
        sent = await asgi_post(CV_DRAFT, {**LETTER, "stream": True}, ordinary_user_token, disconnect_when=first_delta)
        return sent, await wait_for_rows(1)

    sent, rows = asyncio.run(scenario())

    assert sent[0]["status"] == 200
    [row] = rows
    assert (row.provider_config_id, row.outcome, row.streamed) == (config.pk, "aborted", True)
    user_text = prompts.cv_draft_text(profile=LETTER["profile"], job=LETTER["job"], language=None)
    # No usage reported yet: the prompt is estimated, the output counted from the text passed on (the first delta).
    first_delta_text = stream_pieces(reply_text(config.model_name, user_text))[0]
    assert json.loads(sent[-1]["body"].split(b"data: ", 1)[1])["text"] == first_delta_text
    assert row.input_tokens == prompt_estimate(user_text, prompts.CV_DRAFTING_SYSTEM)
    assert row.output_tokens == math.ceil(len(first_delta_text) / 4)
    # The reservation is settled to what was consumed.
    day = TokenCounter.objects.get(provider_config=config, period="day")
    assert (day.used, day.reserved) == (row.input_tokens + row.output_tokens, 0)


def test_a_client_that_leaves_while_a_chunk_is_being_sent_leaves_an_aborted_row(task_config, ordinary_user_token):
    # The client stops reading after the first delta; the gateway is blocked in `send` when it leaves.
    config = task_config("openai")

    async def scenario():
        sent = await asgi_post(
            COVER_LETTER, {**LETTER, "stream": True}, ordinary_user_token, disconnect_when=first_delta
        )
        return sent, await wait_for_rows(1)

    sent, rows = asyncio.run(scenario())

    [row] = rows
    assert (row.provider_config_id, row.outcome, row.streamed) == (config.pk, "aborted", True)
    delta = json.loads(sent[-1]["body"].split(b"data: ", 1)[1])["text"]
    assert row.output_tokens == math.ceil(len(delta) / 4)
    assert row.input_tokens > 0
    assert not any(b"event: done" in message.get("body", b"") for message in sent)


def test_a_client_that_leaves_before_a_plain_answer_leaves_an_aborted_row(task_config, ordinary_user_token):
    config = task_config("openai", key_suffix="~latency=3000")

    async def scenario():
        scope = http_scope(CV_DRAFT, headers={"Authorization": f"Bearer {ordinary_user_token}"})
        started = asyncio.get_running_loop().time()
        sent = await asgi_exchange(ASGIHandler(), scope, json.dumps(LETTER).encode(), leave_after=0.5)
        elapsed = asyncio.get_running_loop().time() - started
        return sent, elapsed, await wait_for_rows(1)

    sent, elapsed, rows = asyncio.run(scenario())

    assert sent == []  # nothing was answered: the client had gone
    assert elapsed < 2.5  # the provider call was abandoned, not awaited
    [row] = rows
    assert (row.provider_config_id, row.outcome, row.streamed) == (config.pk, "aborted", False)
    assert (row.input_tokens, row.output_tokens) == (0, 0)


def test_a_client_that_leaves_before_the_stream_starts_leaves_an_aborted_row(task_config, ordinary_user_token):
    # The provider stream is open (its first delta read) when the client goes, before any body was sent.
    config = task_config("gemini")

    def at_headers(message: dict, sent: list[dict]) -> bool:
        return message["type"] == "http.response.start"

    async def scenario():
        sent = await asgi_post(
            COVER_LETTER, {**LETTER, "stream": True}, ordinary_user_token, disconnect_when=at_headers
        )
        return sent, await wait_for_rows(1)

    sent, rows = asyncio.run(scenario())

    assert [message["type"] for message in sent] == ["http.response.start"]
    [row] = rows
    assert (row.provider_config_id, row.outcome, row.streamed) == (config.pk, "aborted", True)
    assert row.input_tokens > 0 and row.output_tokens > 0
