"""Each task endpoint against each provider's fake, through the real SDKs: the answer, the usage to the token, the
usage row and its cost, and the headers.

Expected counts follow the fake's formula (providers/fake/generation.py): ceil(len / 4) per text part, a fixed
cost per image, JSON output built from the schema.
"""

from __future__ import annotations

import base64
import io
import json
import math
from decimal import Decimal

import genai_prices
import pytest
from django.test import Client
from PIL import Image

from providers.fake.generation import json_text, reply_text, text_tokens
from providers.fake.schema_instance import instance_from_schema
from tasks import prompts
from tasks.schemas import IMAGE_VERDICT, JOB_POSTING
from tests.tasks.conftest import (
    COVER_LETTER,
    CV_DRAFT,
    EXTRACT,
    PROVIDERS,
    VALIDATE_IMAGE,
    call,
    db_with_threads,
    sse_events,
    usage_rows,
)

pytestmark = db_with_threads

POSTING = "Senior Python Developer at Acme GmbH, Berlin (hybrid). Full time. 70,000-85,000 EUR a year. Django."
PROFILE = "Ada Lovelace. Ten years of Python and Django; led a team of five at Initech. MSc Mathematics."
JOB = "Backend engineer at Acme: Python, Django, PostgreSQL."
# Overrides make the expected cost exact: every input token at $2 per million, every output token at $8.
PRICES = {"input_price_per_million": Decimal("2"), "output_price_per_million": Decimal("8")}


def png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def image_tokens(provider: str, data: bytes) -> int:
    if provider == "openai":
        return 85
    if provider == "gemini":
        return 258
    return min(1600, max(1, math.ceil(len(base64.b64encode(data)) / 1000)))


def expected_cost(input_tokens: int, output_tokens: int) -> Decimal:
    return (Decimal(input_tokens) * 2 + Decimal(output_tokens) * 8) / 1_000_000


def check_answer(response, provider: str, config, *, input_tokens: int, output_tokens: int) -> dict:
    """The parts of an answer common to all tasks; returns the body."""
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["provider"]["type"] == provider
    assert body["provider"]["config_id"] == config.pk
    assert body["provider"]["name"] == config.display_name
    assert body["usage"] == {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }
    assert body["attempts"] == 1
    assert Decimal(body["cost_usd"]) == expected_cost(input_tokens, output_tokens)
    assert body["priced"] is True
    assert response["X-Request-ID"] == body["request_id"]
    assert float(response["X-Gateway-Time-Ms"]) >= 0
    [row] = usage_rows(request_id=body["request_id"])
    assert (row.outcome, row.attempt, row.provider_config_id, row.provider_type) == ("success", 1, config.pk, provider)
    assert (row.input_tokens, row.output_tokens, row.reasoning_tokens) == (input_tokens, output_tokens, 0)
    assert row.cost_usd == expected_cost(input_tokens, output_tokens)
    assert row.model == body["provider"]["model"]
    assert row.streamed is False
    return body


@pytest.mark.parametrize("provider", PROVIDERS)
def test_it_extracts_a_job_posting_with_each_provider(provider, task_config, auth, ordinary_user):
    config = task_config(provider, **PRICES)
    response = call(EXTRACT, {"text": POSTING, "source_url": "https://jobs.example.com/1"}, headers=auth)

    user_text = prompts.extraction_text(text=POSTING, source_url="https://jobs.example.com/1")
    expected = instance_from_schema(JOB_POSTING.wire)
    body = check_answer(
        response,
        provider,
        config,
        input_tokens=text_tokens(prompts.EXTRACTION_SYSTEM) + text_tokens(user_text),
        output_tokens=text_tokens(json_text(expected)),
    )
    assert body["result"] == expected
    assert usage_rows()[0].user_id == ordinary_user.pk
    assert usage_rows()[0].task == "extraction"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_it_validates_a_job_image_with_each_provider(provider, task_config, auth):
    config = task_config(provider, **PRICES)
    data = png()
    upload = io.BytesIO(data)
    upload.name = "posting.bin"  # the name and declared type are not what decides
    response = call(VALIDATE_IMAGE, {"image": upload}, headers=auth, multipart=True)

    expected = instance_from_schema(IMAGE_VERDICT.wire)
    body = check_answer(
        response,
        provider,
        config,
        input_tokens=text_tokens(prompts.IMAGE_VALIDATION_SYSTEM)
        + text_tokens(prompts.IMAGE_VALIDATION_TEXT)
        + image_tokens(provider, data),
        output_tokens=text_tokens(json_text(expected)),
    )
    assert body["result"] == expected
    assert set(body["result"]) == {"is_job_posting", "confidence", "reason", "extracted_text"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_it_drafts_a_cv_from_text_with_each_provider(provider, task_config, auth):
    config = task_config(provider, **PRICES)
    response = call(CV_DRAFT, {"profile": PROFILE, "job": JOB, "language": "de"}, headers=auth)

    user_text = prompts.cv_draft_text(profile=PROFILE, job=JOB, language="de")
    reply = reply_text(config.model_name, user_text)
    body = check_answer(
        response,
        provider,
        config,
        input_tokens=text_tokens(prompts.CV_DRAFTING_SYSTEM) + text_tokens(user_text),
        output_tokens=text_tokens(reply),
    )
    assert body["result"] == {"markdown": reply}


def test_it_drafts_a_cv_from_the_extractors_output(task_config, auth):
    task_config("openai", **PRICES)
    posting = call(EXTRACT, {"text": POSTING}, headers=auth).json()["result"]
    response = call(CV_DRAFT, {"profile": PROFILE, "job": posting}, headers=auth)

    assert response.status_code == 200
    job_text = json.dumps(posting, ensure_ascii=False, separators=(",", ":"))
    user_text = prompts.cv_draft_text(profile=PROFILE, job=job_text, language=None)
    assert response.json()["usage"]["input_tokens"] == text_tokens(prompts.CV_DRAFTING_SYSTEM) + text_tokens(user_text)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_it_writes_a_cover_letter_with_each_provider(provider, task_config, auth):
    config = task_config(provider, **PRICES)
    data = {"profile": PROFILE, "job": JOB, "tone": "enthusiastic", "language": "fr"}
    response = call(COVER_LETTER, data, headers=auth)

    user_text = prompts.cover_letter_text(profile=PROFILE, job=JOB, tone="enthusiastic", language="fr")
    reply = reply_text(config.model_name, user_text)
    body = check_answer(
        response,
        provider,
        config,
        input_tokens=text_tokens(prompts.COVER_LETTER_SYSTEM) + text_tokens(user_text),
        output_tokens=text_tokens(reply),
    )
    assert body["result"] == {"text": reply, "tone": "enthusiastic", "language": "fr"}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("path", "system"), [(CV_DRAFT, "CV_DRAFTING_SYSTEM"), (COVER_LETTER, "COVER_LETTER_SYSTEM")])
def test_it_streams_drafts_and_letters_with_each_provider(provider, path, system, task_config, auth):
    config = task_config(provider, **PRICES)
    response = call(path, {"profile": PROFILE, "job": JOB, "stream": True}, headers=auth)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["X-Request-ID"] and float(response["X-Gateway-Time-Ms"]) >= 0
    events = sse_events(response.body)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"delta"} and len(names) > 2
    if path == CV_DRAFT:
        user_text = prompts.cv_draft_text(profile=PROFILE, job=JOB, language=None)
    else:
        user_text = prompts.cover_letter_text(profile=PROFILE, job=JOB, tone="professional", language="en")
    reply = reply_text(config.model_name, user_text)
    assert "".join(data["text"] for name, data in events if name == "delta") == reply

    done = events[-1][1]
    input_tokens = text_tokens(getattr(prompts, system)) + text_tokens(user_text)
    assert done["usage"]["input_tokens"] == input_tokens
    assert done["usage"]["output_tokens"] == text_tokens(reply)
    assert done["provider"]["config_id"] == config.pk
    assert Decimal(done["cost_usd"]) == expected_cost(input_tokens, text_tokens(reply))
    assert done["request_id"] == response["X-Request-ID"] and done["attempts"] == 1
    [row] = usage_rows()
    assert (row.outcome, row.streamed, row.input_tokens, row.output_tokens) == (
        "success",
        True,
        input_tokens,
        text_tokens(reply),
    )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_under_wsgi_a_stream_arrives_whole(provider, task_config, auth):
    # manage.py runserver and WSGI servers run an async view in an event loop that ends with the view: the events
    # are read to the end there and sent in one body (before, the stream broke after its first delta).
    config = task_config(provider, **PRICES)
    response = Client().post(
        COVER_LETTER, {"profile": PROFILE, "job": JOB, "stream": True}, content_type="application/json", headers=auth
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    events = sse_events(response.content)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"delta"} and len(names) > 2
    user_text = prompts.cover_letter_text(profile=PROFILE, job=JOB, tone="professional", language="en")
    reply = reply_text(config.model_name, user_text)
    assert "".join(data["text"] for name, data in events if name == "delta") == reply
    assert events[-1][1]["request_id"] == response["X-Request-ID"]
    [row] = usage_rows()
    assert (row.outcome, row.streamed, row.output_tokens) == ("success", True, text_tokens(reply))


def test_it_counts_cached_and_reasoning_tokens_and_prices_them_from_the_table(task_config, auth):
    # o4-mini is a reasoning model on the fake: reasoning = 2 x visible output, and output includes it.
    config = task_config("openai", model_name="o4-mini", key_suffix="~cached=40")
    response = call(COVER_LETTER, {"profile": PROFILE, "job": JOB}, headers=auth)

    assert response.status_code == 200
    user_text = prompts.cover_letter_text(profile=PROFILE, job=JOB, tone="professional", language="en")
    visible = text_tokens(reply_text(config.model_name, user_text))
    input_tokens = text_tokens(prompts.COVER_LETTER_SYSTEM) + text_tokens(user_text)
    usage = response.json()["usage"]
    assert usage == {
        "input_tokens": input_tokens,
        "output_tokens": 3 * visible,
        "cached_input_tokens": 40,
        "cache_write_tokens": 0,
        "reasoning_tokens": 2 * visible,
    }
    price = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=input_tokens,
            cache_read_tokens=40,
            output_tokens=3 * visible,
            output_reasoning_tokens=2 * visible,
        ),
        "o4-mini",
        provider_id="openai",
    ).total_price
    [row] = usage_rows()
    assert (row.cached_input_tokens, row.reasoning_tokens) == (40, 2 * visible)
    assert row.cost_usd == price.quantize(Decimal("1e-10"))
    assert round(Decimal(response.json()["cost_usd"]), 2) == round(price, 2)
    assert Decimal(response.json()["cost_usd"]) == row.cost_usd


def test_it_reports_a_model_without_a_known_price_as_unpriced_not_free(task_config, auth, monkeypatch):
    # Every model the fake serves is in the price table: make the table know none of them.
    from usage import pricing

    monkeypatch.setattr(pricing, "_model_lookup", lambda provider_id, ref: None)
    config = task_config("openai")
    response = call(CV_DRAFT, {"profile": PROFILE, "job": JOB}, headers=auth)

    assert response.status_code == 200
    body = response.json()
    user_text = prompts.cv_draft_text(profile=PROFILE, job=JOB, language=None)
    reply = reply_text(config.model_name, user_text)
    assert body["result"] == {"markdown": reply}
    assert (body["priced"], body["cost_usd"]) == (False, None)
    [row] = usage_rows()
    assert (row.priced, row.cost_usd, row.input_tokens, row.output_tokens) == (
        False,
        None,
        text_tokens(prompts.CV_DRAFTING_SYSTEM) + text_tokens(user_text),
        text_tokens(reply),
    )


def test_it_keeps_a_sane_request_id_and_replaces_any_other(task_config, auth):
    task_config("openai")
    kept = call(CV_DRAFT, {"profile": PROFILE, "job": JOB}, headers={**auth, "X-Request-ID": "front-end:42.a_b-c"})
    assert kept["X-Request-ID"] == "front-end:42.a_b-c" == kept.json()["request_id"]
    assert usage_rows()[0].request_id == "front-end:42.a_b-c"

    replaced = call(CV_DRAFT, {"profile": PROFILE, "job": JOB}, headers={**auth, "X-Request-ID": "x" * 65})
    assert replaced["X-Request-ID"] != "x" * 65 and len(replaced["X-Request-ID"]) == 32
    injected = call(CV_DRAFT, {"profile": PROFILE, "job": JOB}, headers={**auth, "X-Request-ID": "a b<script>"})
    assert injected["X-Request-ID"] != "a b<script>"


def test_errors_carry_the_request_id_and_gateway_time_too(auth):
    response = call(CV_DRAFT, {"profile": PROFILE}, headers={**auth, "X-Request-ID": "req-1"})
    assert response.status_code == 400
    assert response["X-Request-ID"] == "req-1" == response.json()["request_id"]
    assert float(response["X-Gateway-Time-Ms"]) >= 0
