"""The fake provider servers, driven through the unmodified official SDKs and, for wire details, raw HTTP."""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import time
from typing import Any, Literal

import anthropic
import httpx2
import openai
import pydantic
import pytest
from django.core.management import CommandError, call_command
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from jsonschema import Draft202012Validator

from providers.fake.anthropic import count_input as anthropic_input
from providers.fake.behaviour import SeenOnce
from providers.fake.gemini import count_input as gemini_input
from providers.fake.generation import anthropic_image_tokens, reply_text, stream_pieces, text_tokens
from providers.fake.openai import count_input as openai_input
from providers.fake.schema_instance import instance_from_schema, invalid_instance_from_schema
from providers.fake.server import is_loopback
from providers.management.commands import fake_providers as fake_providers_command

PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
SYSTEM = "You are a terse assistant."
QUESTION = "What is the capital of France, and why is it famous?"


class Step(pydantic.BaseModel):
    explanation: str
    output: str


class Answer(pydantic.BaseModel):
    steps: list[Step] = pydantic.Field(min_length=2)
    final_answer: str
    confidence: float
    mood: Literal["calm", "busy"]
    nickname: str | None
    due: datetime.date
    attempts: int = pydantic.Field(ge=3)


def openai_client(server, key="sk-test", **options) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.openai_base_url, max_retries=0, **options)


def anthropic_client(server, key="sk-ant-test", **options) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=server.anthropic_base_url, max_retries=0, **options)


def gemini_client(server, key="AIzaTest", **http_options) -> genai.Client:
    options = genai_types.HttpOptions(base_url=server.gemini_base_url, **http_options)
    return genai.Client(api_key=key, http_options=options)


def gemini_generate(server, key="AIzaTest", *, model, contents, config=None, **http_options):
    # Keep the Client referenced: google-genai closes its HTTP client when the Client is garbage collected,
    # so `genai.Client(...).models.generate_content(...)` fails with "client has been closed".
    client = gemini_client(server, key, **http_options)
    return client.models.generate_content(model=model, contents=contents, config=config)


def gemini_stream(server, key="AIzaTest", *, model, contents, config=None, **http_options) -> list:
    client = gemini_client(server, key, **http_options)
    return list(client.models.generate_content_stream(model=model, contents=contents, config=config))


def chat(client, model="gpt-4o", **kwargs):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    return client.chat.completions.create(model=model, messages=messages, **kwargs)


def claude(client, model="claude-haiku-4-5", **kwargs):
    messages = [{"role": "user", "content": QUESTION}]
    return client.messages.create(model=model, max_tokens=1000, system=SYSTEM, messages=messages, **kwargs)


def gemini_config(**kwargs) -> genai_types.GenerateContentConfig:
    return genai_types.GenerateContentConfig(system_instruction=SYSTEM, **kwargs)


INPUT_TOKENS = text_tokens(SYSTEM) + text_tokens(QUESTION)


# --- OpenAI ---------------------------------------------------------------------------------------------


def test_openai_answers_with_the_fake_reply_and_the_formula_usage(fake_providers):
    completion = chat(openai_client(fake_providers))

    expected = 'Fake reply from gpt-4o to "What is the capital of France, and why is it fam...".'
    assert expected == reply_text("gpt-4o", QUESTION)
    assert (INPUT_TOKENS, text_tokens(expected)) == (7 + 13, 20)  # ceil(26 / 4) + ceil(52 / 4), ceil(80 / 4)
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == INPUT_TOKENS
    assert completion.usage.completion_tokens == text_tokens(expected)
    assert completion.usage.total_tokens == INPUT_TOKENS + text_tokens(expected)
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0


def test_openai_async_client_and_reasoning_tokens_of_a_reasoning_model(fake_providers):
    async def call():
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=fake_providers.openai_base_url, max_retries=0)
        async with client:
            return await client.chat.completions.create(
                model="o4-mini", messages=[{"role": "user", "content": QUESTION}]
            )

    completion = asyncio.run(call())

    visible = text_tokens(reply_text("o4-mini", QUESTION))
    assert completion.model == "o4-mini-2025-04-16"
    assert completion.usage.completion_tokens_details.reasoning_tokens == 2 * visible
    assert completion.usage.completion_tokens == 3 * visible


def test_openai_stream_sends_deltas_then_a_usage_chunk(fake_providers):
    chunks = list(chat(openai_client(fake_providers), stream=True, stream_options={"include_usage": True}))

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == reply_text("gpt-4o", QUESTION)
    assert sum(1 for chunk in chunks if chunk.choices and chunk.choices[0].delta.content) > 3
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == INPUT_TOKENS
    assert chunks[-1].usage.completion_tokens == text_tokens(text)


def test_openai_stream_wire_framing(fake_providers):
    response = httpx2.post(
        f"{fake_providers.openai_base_url}/chat/completions",
        headers={"Authorization": "Bearer sk-test"},
        json={
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert all(payload["object"] == "chat.completion.chunk" and "usage" in payload for payload in payloads)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] > 0


def test_openai_stream_without_include_usage_has_no_usage_key(fake_providers):
    response = httpx2.post(
        f"{fake_providers.openai_base_url}/chat/completions",
        headers={"Authorization": "Bearer sk-test"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
    )

    payloads = [json.loads(event[6:]) for event in response.text.split("\n\n")[:-2]]
    assert all("usage" not in payload for payload in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_structured_output_validates_against_the_schema_sent(fake_providers):
    completion = openai_client(fake_providers).chat.completions.parse(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": QUESTION}], response_format=Answer
    )

    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Answer)
    assert len(parsed.steps) >= 2 and parsed.attempts >= 3
    content = completion.choices[0].message.content
    assert completion.usage.completion_tokens == text_tokens(content)


def test_openai_json_object_mode_answers_json(fake_providers):
    completion = chat(openai_client(fake_providers), response_format={"type": "json_object"})

    assert json.loads(completion.choices[0].message.content) == {"reply": reply_text("gpt-4o", QUESTION)}


def test_openai_counts_an_image_and_mentions_it(fake_providers):
    content = [
        {"type": "text", "text": "What's in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}},
    ]
    completion = openai_client(fake_providers).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
    )

    assert completion.usage.prompt_tokens == text_tokens("What's in this image?") + 85
    assert completion.choices[0].message.content.endswith("I saw 1 image.")


def test_openai_cuts_the_reply_at_max_tokens(fake_providers):
    completion = chat(openai_client(fake_providers), max_completion_tokens=3)

    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == reply_text("gpt-4o", QUESTION)[:12]
    assert completion.usage.completion_tokens == 3


def test_openai_refuses_a_wrong_key_with_the_real_401(fake_providers):
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(openai_client(fake_providers, key="sk-proj-invalid-0123456789abcd"))

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.body["message"].startswith("Incorrect API key provided: sk-proj-******************abcd.")


def test_openai_401_body_is_byte_for_byte_the_recorded_one(fake_providers):
    response = httpx2.post(
        f"{fake_providers.openai_base_url}/chat/completions",
        headers={"Authorization": "Bearer <not-a-real-key>"},
        json={"model": "gpt-4o", "messages": []},
    )

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.text == (
        "{\n"
        '    "error": {\n'
        '        "message": "Incorrect API key provided: \\u003cnot-a-r****key\\u003e. '
        'You can find your API key at https://platform.openai.com/account/api-keys.",\n'
        '        "type": "invalid_request_error",\n'
        '        "param": null,\n'
        '        "code": "invalid_api_key"\n'
        "    }\n"
        "}\n"
    )


def test_openai_refuses_a_missing_key_and_a_revoked_key(fake_providers):
    url = f"{fake_providers.openai_base_url}/models"
    missing = httpx2.get(url)
    revoked = httpx2.get(url, headers={"Authorization": "Bearer sk-revoked-key-000000"})

    assert missing.status_code == 401 and missing.json()["error"]["message"].startswith("You didn't provide")
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_api_key"


def test_openai_noperm_key_gets_403(fake_providers):
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(openai_client(fake_providers, key="sk-noperm"))

    assert caught.value.code == "unsupported_country_region_territory"


def test_openai_unknown_model_is_404_on_chat_and_retrieve(fake_providers):
    client = openai_client(fake_providers)
    with pytest.raises(openai.NotFoundError) as on_chat:
        chat(client, model="gpt-9")
    with pytest.raises(openai.NotFoundError) as on_retrieve:
        client.models.retrieve("gpt-9")

    assert on_chat.value.code == "model_not_found"
    assert "`gpt-9` does not exist" in on_chat.value.body["message"]
    assert on_retrieve.value.code == "model_not_found"


def test_openai_lists_and_retrieves_models(fake_providers):
    client = openai_client(fake_providers)
    ids = {model.id for model in client.models.list()}

    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "o4-mini", "gpt-5-mini"} <= ids
    assert client.models.retrieve("gpt-4o-mini").owned_by == "system"


# --- Anthropic ------------------------------------------------------------------------------------------


def test_anthropic_answers_with_the_fake_reply_and_the_formula_usage(fake_providers):
    message = claude(anthropic_client(fake_providers))

    expected = reply_text("claude-haiku-4-5", QUESTION)
    assert message.model == "claude-haiku-4-5-20251001"
    assert message.content[0].text == expected
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == INPUT_TOKENS
    assert message.usage.output_tokens == text_tokens(expected)
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0


def test_anthropic_accepts_the_key_in_x_api_key_too(fake_providers):
    response = httpx2.post(
        f"{fake_providers.anthropic_base_url}/v1/messages",
        headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    )

    assert response.status_code == 200
    assert response.json()["model"] == "claude-sonnet-4-5-20250929"
    assert response.headers["request-id"].startswith("req_")


def test_anthropic_stream_sends_the_real_event_sequence(fake_providers):
    response = httpx2.post(
        f"{fake_providers.anthropic_base_url}/v1/messages",
        headers={"x-api-key": "sk-ant-test"},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": QUESTION}],
        },
    )

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = response.text.split("\n\n")
    assert events[-1] == ""
    names = [event.split("\n")[0].removeprefix("event: ") for event in events[:-1]]
    deltas = names.count("content_block_delta")
    assert deltas > 3
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [json.loads(event.split("\n")[1].removeprefix("data: ")) for event in events[:-1]]
    assert events[1].endswith("               }")  # padded like the real service
    assert events[2] == 'event: ping\ndata: {"type": "ping"}'
    assert data[0]["message"]["usage"]["input_tokens"] == text_tokens(QUESTION)
    final = data[-2]
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == text_tokens(reply_text("claude-haiku-4-5", QUESTION))


def test_anthropic_async_stream_builds_the_final_message(fake_providers):
    async def call():
        client = anthropic.AsyncAnthropic(
            api_key="sk-ant-test", base_url=fake_providers.anthropic_base_url, max_retries=0
        )
        async with (
            client,
            client.messages.stream(
                model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": QUESTION}]
            ) as stream,
        ):
            texts = [text async for text in stream.text_stream]
            return texts, await stream.get_final_message()

    texts, message = asyncio.run(call())

    expected = reply_text("claude-haiku-4-5", QUESTION)
    assert len(texts) > 3 and "".join(texts) == expected
    assert message.usage.input_tokens == text_tokens(QUESTION)
    assert message.usage.output_tokens == text_tokens(expected)


def test_anthropic_native_structured_output_validates(fake_providers):
    message = anthropic_client(fake_providers).messages.parse(
        model="claude-haiku-4-5",
        max_tokens=2000,
        messages=[{"role": "user", "content": QUESTION}],
        output_format=Answer,
    )

    assert isinstance(message.parsed_output, Answer)
    assert message.usage.output_tokens == text_tokens(message.content[0].text)


def test_anthropic_forced_tool_use_fits_the_input_schema(fake_providers):
    tool = {"name": "record_answer", "description": "Record it.", "input_schema": Answer.model_json_schema()}
    message = claude(
        anthropic_client(fake_providers), tools=[tool], tool_choice={"type": "tool", "name": "record_answer"}
    )

    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "record_answer"
    Answer.model_validate(block.input)


def test_anthropic_streams_a_forced_tool_use_as_input_json_deltas(fake_providers):
    tool = {"name": "record_answer", "input_schema": Answer.model_json_schema()}
    client = anthropic_client(fake_providers)
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=1000,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[tool],
        tool_choice={"type": "any"},
    ) as stream:
        kinds = {event.type for event in stream}
        message = stream.get_final_message()

    assert "input_json" in kinds
    assert message.stop_reason == "tool_use"
    Answer.model_validate(message.content[0].input)


def test_anthropic_counts_an_image_by_size(fake_providers):
    content = [
        {"type": "text", "text": "Describe."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1X1 * 30}},
    ]
    message = anthropic_client(fake_providers).messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": content}]
    )

    assert anthropic_image_tokens(PNG_1X1 * 30) == 3
    assert message.usage.input_tokens == text_tokens("Describe.") + 3
    assert message.content[0].text.endswith("I saw 1 image.")


def test_anthropic_reports_cached_tokens_from_the_header(fake_providers):
    message = claude(anthropic_client(fake_providers), extra_headers={"X-Fake-Cached-Tokens": "5"})

    assert message.usage.cache_read_input_tokens == 5
    assert message.usage.input_tokens == INPUT_TOKENS - 5


def test_anthropic_wrong_key_gets_the_recorded_401(fake_providers):
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude(anthropic_client(fake_providers, key="sk-ant-invalid"))

    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    with pytest.raises(anthropic.AuthenticationError):
        claude(anthropic_client(fake_providers, key="sk-openai-style"))


def test_anthropic_noperm_key_gets_a_permission_error(fake_providers):
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        claude(anthropic_client(fake_providers, key="sk-ant-noperm"))

    assert caught.value.body["error"]["type"] == "permission_error"


def test_anthropic_unknown_model_is_404_on_messages_and_retrieve(fake_providers):
    client = anthropic_client(fake_providers)
    with pytest.raises(anthropic.NotFoundError) as on_messages:
        claude(client, model="claude-nine")
    with pytest.raises(anthropic.NotFoundError) as on_retrieve:
        client.models.retrieve("claude-nine")

    expected = {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-nine"}}
    assert on_messages.value.body == expected
    assert on_retrieve.value.body == expected


def test_anthropic_lists_models_across_pages_and_retrieves_an_alias(fake_providers):
    client = anthropic_client(fake_providers)
    ids = [model.id for model in client.models.list(limit=2)]

    assert {"claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001", "claude-opus-4-1-20250805"} <= set(ids)
    assert len(ids) == len(set(ids))
    assert client.models.retrieve("claude-opus-4-1").id == "claude-opus-4-1-20250805"


def test_anthropic_count_tokens_uses_the_formula(fake_providers):
    body = {
        "model": "claude-haiku-4-5",
        "system": SYSTEM,
        "messages": [{"role": "user", "content": QUESTION}],
    }
    counted = anthropic_client(fake_providers).messages.count_tokens(**body)

    assert counted.input_tokens == INPUT_TOKENS == anthropic_input(body)[0]


# --- Gemini ---------------------------------------------------------------------------------------------


def test_gemini_answers_with_the_fake_reply_and_the_formula_usage(fake_providers):
    response = gemini_generate(fake_providers, model="gemini-2.5-flash", contents=QUESTION, config=gemini_config())

    expected = reply_text("gemini-2.5-flash", QUESTION)
    output = text_tokens(expected)
    assert response.text == expected
    assert response.model_version == "gemini-2.5-flash"
    assert response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage.prompt_token_count == INPUT_TOKENS
    assert usage.candidates_token_count == output
    assert usage.thoughts_token_count == 2 * output
    assert usage.total_token_count == INPUT_TOKENS + 3 * output
    assert usage.cached_content_token_count is None


def test_gemini_non_thinking_models_and_zero_budget_report_no_thoughts(fake_providers):
    client = gemini_client(fake_providers)
    flash_2 = client.models.generate_content(model="gemini-2.0-flash", contents=QUESTION)
    no_budget = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=QUESTION,
        config=genai_types.GenerateContentConfig(thinking_config=genai_types.ThinkingConfig(thinking_budget=0)),
    )

    for response in (flash_2, no_budget):
        usage = response.usage_metadata
        assert usage.thoughts_token_count is None
        assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count


def test_gemini_stream_through_the_sync_and_async_clients(fake_providers):
    client = gemini_client(fake_providers)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents=QUESTION))

    async def call():
        stream = await client.aio.models.generate_content_stream(model="gemini-2.5-pro", contents=QUESTION)
        return [chunk async for chunk in stream]

    async_chunks = asyncio.run(call())

    expected = reply_text("gemini-2.5-pro", QUESTION)
    for received in (chunks, async_chunks):
        assert len(received) > 3
        assert "".join(chunk.text for chunk in received) == expected
        assert received[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
        assert received[-1].usage_metadata.candidates_token_count == text_tokens(expected)


def test_gemini_sse_wire_framing(fake_providers):
    response = httpx2.post(
        f"{fake_providers.gemini_base_url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        headers={"x-goog-api-key": "AIzaTest"},
        json={"contents": [{"role": "user", "parts": [{"text": QUESTION}]}]},
    )

    assert response.headers["content-type"] == "text/event-stream"
    events = response.text.split("\r\n\r\n")
    assert events[-1] == "" and all(event.startswith("data: {") for event in events[:-1])
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["promptTokenCount"] == text_tokens(QUESTION)


def test_gemini_stream_without_alt_sse_is_one_json_array(fake_providers):
    response = httpx2.post(
        f"{fake_providers.gemini_base_url}/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        headers={"x-goog-api-key": "AIzaTest"},
        json={"contents": [{"parts": [{"text": QUESTION}]}]},
    )

    chunks = response.json()
    assert "\n,\r\n" in response.text
    assert "".join(chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks) == reply_text(
        "gemini-2.0-flash", QUESTION
    )
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_gemini_structured_output_with_response_schema_and_json_schema(fake_providers):
    client = gemini_client(fake_providers, api_version="v1beta")
    with_schema = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=QUESTION,
        config=genai_types.GenerateContentConfig(response_mime_type="application/json", response_schema=Answer),
    )
    with_json_schema = client.models.generate_content(
        model="gemini-2.5-flash-lite",
        contents=QUESTION,
        config=genai_types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=Answer.model_json_schema()
        ),
    )

    assert isinstance(with_schema.parsed, Answer)
    Answer.model_validate_json(with_json_schema.text)


def test_gemini_counts_an_inline_image(fake_providers):
    image = genai_types.Part.from_bytes(data=b"\x89PNG fake bytes", mime_type="image/png")
    response = gemini_generate(fake_providers, model="gemini-2.0-flash", contents=[image, "What is this?"])

    assert response.usage_metadata.prompt_token_count == text_tokens("What is this?") + 258
    modalities = {detail.modality.value: detail.token_count for detail in response.usage_metadata.prompt_tokens_details}
    assert modalities == {"TEXT": text_tokens("What is this?"), "IMAGE": 258}
    assert response.text.endswith("I saw 1 image.")


def test_gemini_wrong_key_gets_400_api_key_invalid(fake_providers):
    with pytest.raises(genai_errors.ClientError) as caught:
        gemini_generate(fake_providers, key="AIzaInvalidKey", model="gemini-2.5-flash", contents=QUESTION)

    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_gemini_auth_error_on_an_sse_stream_is_plain_json(fake_providers):
    response = httpx2.post(
        f"{fake_providers.gemini_base_url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        headers={"x-goog-api-key": "sk-not-a-gemini-key"},
        json={"contents": [{"parts": [{"text": "Hi"}]}]},
    )

    assert response.status_code == 400
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.startswith('{\n  "error": {\n    "code": 400,\n')
    assert response.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_gemini_reads_the_key_from_the_query_string(fake_providers):
    url = f"{fake_providers.gemini_base_url}/v1beta/models/gemini-2.5-flash"

    assert httpx2.get(url, params={"key": "AIzaTest"}).status_code == 200
    assert httpx2.get(url).status_code == 403


def test_gemini_noperm_key_gets_permission_denied(fake_providers):
    with pytest.raises(genai_errors.ClientError) as caught:
        gemini_generate(fake_providers, key="AIzaNoPerm", model="gemini-2.5-flash", contents=QUESTION)

    assert caught.value.code == 403 and caught.value.status == "PERMISSION_DENIED"


def test_gemini_unknown_model_is_404_on_generate_and_get(fake_providers):
    client = gemini_client(fake_providers)
    with pytest.raises(genai_errors.ClientError) as on_generate:
        client.models.generate_content(model="gemini-9", contents=QUESTION)
    with pytest.raises(genai_errors.ClientError) as on_get:
        client.models.get(model="gemini-9")

    assert on_generate.value.code == 404 and on_generate.value.status == "NOT_FOUND"
    assert on_generate.value.message.startswith("models/gemini-9 is not found for API version v1,")
    assert on_get.value.code == 404


def test_gemini_lists_models_across_pages_and_gets_one(fake_providers):
    client = gemini_client(fake_providers)
    names = [model.name for model in client.models.list(config={"page_size": 2})]

    expected = {"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "gemini-2.5-flash-lite"}
    assert {f"models/{name}" for name in expected} <= set(names)
    assert len(names) == len(set(names))
    assert client.models.get(model="gemini-2.5-pro").output_token_limit == 65536


# --- Failure directives -----------------------------------------------------------------------------------


def test_fail_429_gives_each_providers_rate_limit_with_retry_after(fake_providers):
    with pytest.raises(openai.RateLimitError) as from_openai:
        chat(openai_client(fake_providers, key="sk-demo~fail=429"))
    with pytest.raises(anthropic.RateLimitError) as from_anthropic:
        claude(anthropic_client(fake_providers, key="sk-ant-demo~fail=429"))
    with pytest.raises(genai_errors.ClientError) as from_gemini:
        gemini_generate(fake_providers, key="AIzaDemo~fail=429", model="gemini-2.5-flash", contents=QUESTION)

    assert from_openai.value.code == "rate_limit_exceeded"
    assert from_openai.value.response.headers["retry-after"] == "1"
    assert from_anthropic.value.body["error"]["type"] == "rate_limit_error"
    assert from_anthropic.value.response.headers["retry-after"] == "1"
    assert from_gemini.value.code == 429 and from_gemini.value.status == "RESOURCE_EXHAUSTED"
    assert from_gemini.value.response.headers["retry-after"] == "1"


def test_fail_500_gives_each_providers_server_error(fake_providers):
    with pytest.raises(openai.InternalServerError) as from_openai:
        chat(openai_client(fake_providers), extra_headers={"X-Fake-Fail": "500"})
    with pytest.raises(anthropic.InternalServerError) as from_anthropic:
        claude(anthropic_client(fake_providers), extra_headers={"X-Fake-Fail": "500"})
    with pytest.raises(genai_errors.ServerError) as from_gemini:
        gemini_generate(fake_providers, headers={"X-Fake-Fail": "500"}, model="gemini-2.5-flash", contents=QUESTION)

    assert from_openai.value.status_code == 500 and from_openai.value.type == "server_error"
    assert from_anthropic.value.status_code == 500 and from_anthropic.value.body["error"]["type"] == "api_error"
    assert from_gemini.value.code == 500 and from_gemini.value.status == "INTERNAL"


def test_fail_529_is_overloaded_for_anthropic_and_503_for_the_others(fake_providers):
    with pytest.raises(anthropic.OverloadedError) as from_anthropic:
        claude(anthropic_client(fake_providers, key="sk-ant-demo~fail=529"))
    with pytest.raises(openai.InternalServerError) as from_openai:
        chat(openai_client(fake_providers, key="sk-demo~fail=529"))
    with pytest.raises(genai_errors.ServerError) as from_gemini:
        gemini_generate(fake_providers, key="AIzaDemo~fail=503", model="gemini-2.5-flash", contents=QUESTION)

    assert from_anthropic.value.status_code == 529
    assert from_anthropic.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert from_openai.value.status_code == 503
    assert from_gemini.value.code == 503 and from_gemini.value.status == "UNAVAILABLE"


def test_fail_malformed_answers_200_with_a_body_that_is_not_json(fake_providers):
    for path, key_header, body in (
        ("/openai/v1/chat/completions", {"Authorization": "Bearer sk-x"}, {"model": "gpt-4o"}),
        ("/anthropic/v1/messages", {"x-api-key": "sk-ant-x"}, {"model": "claude-haiku-4-5"}),
        ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": "AIzaX"}, {}),
    ):
        response = httpx2.post(
            f"{fake_providers.url}{path}", headers={**key_header, "X-Fake-Fail": "malformed"}, json=body
        )
        assert response.status_code == 200
        with pytest.raises(ValueError):
            json.loads(response.text)

    # What the SDKs make of it: a JSON error, not a parsed answer.
    with pytest.raises(ValueError):
        chat(openai_client(fake_providers, key="sk-demo~fail=malformed"))
    with pytest.raises(genai_errors.UnknownApiResponseError):
        list(gemini_stream(fake_providers, key="AIzaDemo~fail=malformed", model="gemini-2.5-flash", contents=QUESTION))


def test_fail_timeout_holds_the_request_until_the_client_gives_up(fake_providers):
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(openai_client(fake_providers, key="sk-demo~fail=timeout", timeout=0.3))
    with pytest.raises(anthropic.APITimeoutError):
        claude(anthropic_client(fake_providers, key="sk-ant-demo~fail=timeout", timeout=0.3))
    with pytest.raises(httpx2.TimeoutException):
        gemini_generate(
            fake_providers,
            key="AIzaDemo~fail=timeout",
            timeout=300,
            model="gemini-2.5-flash",
            contents=QUESTION,
        )

    assert time.monotonic() - started < 3


def test_fail_midstream_sends_some_deltas_then_drops_the_connection(fake_providers):
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in chat(openai_client(fake_providers, key="sk-demo~fail=midstream"), stream=True):
            received.append(chunk)
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        list(claude(anthropic_client(fake_providers, key="sk-ant-demo~fail=midstream"), stream=True))
    with pytest.raises(httpx2.RemoteProtocolError):
        list(gemini_stream(fake_providers, key="AIzaDemo~fail=midstream", model="gemini-2.5-flash", contents=QUESTION))

    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in received)


def test_fail_midstream_on_a_plain_request_cuts_the_body(fake_providers):
    with pytest.raises(openai.APIConnectionError):
        chat(openai_client(fake_providers, key="sk-demo~fail=midstream"))


def test_fail_400_gives_each_providers_invalid_request_error(fake_providers):
    with pytest.raises(openai.BadRequestError) as from_openai:
        chat(openai_client(fake_providers, key="sk-demo~fail=400"))
    with pytest.raises(openai.BadRequestError) as from_openai_stream:
        chat(openai_client(fake_providers, key="sk-demo~fail=400"), stream=True)
    with pytest.raises(anthropic.BadRequestError) as from_anthropic:
        claude(anthropic_client(fake_providers), extra_headers={"X-Fake-Fail": "400"})
    with pytest.raises(genai_errors.ClientError) as from_gemini:
        gemini_generate(fake_providers, key="AIzaDemo~fail=400", model="gemini-2.5-flash", contents=QUESTION)

    for caught in (from_openai, from_openai_stream):
        assert caught.value.status_code == 400
        assert (caught.value.type, caught.value.code, caught.value.param) == (
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        )
        assert caught.value.body["message"].startswith("This model's maximum context length is 128000 tokens.")
    assert from_anthropic.value.status_code == 400
    assert from_anthropic.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "prompt is too long: 200001 tokens > 200000 maximum"},
    }
    assert from_gemini.value.code == 400 and from_gemini.value.status == "INVALID_ARGUMENT"
    assert from_gemini.value.message.startswith("The input token count (1048577) exceeds the maximum")
    assert "details" not in from_gemini.value.details["error"]  # not the API_KEY_INVALID refusal of a bad key


def test_a_header_directive_overrides_the_key(fake_providers):
    completion = chat(openai_client(fake_providers, key="sk-demo~fail=500"), extra_headers={"X-Fake-Fail": "none"})

    assert completion.choices[0].finish_reason == "stop"


def test_cached_directive_reports_cached_tokens(fake_providers):
    completion = chat(openai_client(fake_providers, key="sk-demo~cached=7"))
    response = gemini_generate(fake_providers, key="AIzaDemo~cached=1000", model="gemini-2.5-flash", contents=QUESTION)

    assert completion.usage.prompt_tokens_details.cached_tokens == 7
    assert completion.usage.prompt_tokens == INPUT_TOKENS
    assert response.usage_metadata.cached_content_token_count == text_tokens(QUESTION)  # capped at the input


def test_latency_directive_delays_without_blocking_other_requests(fake_providers):
    async def call_many():
        client = openai.AsyncOpenAI(api_key="sk-demo~latency=400", base_url=fake_providers.openai_base_url)
        async with client:
            calls = [
                client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
                for _ in range(20)
            ]
            return await asyncio.gather(*calls)

    started = time.monotonic()
    answers = asyncio.run(call_many())
    elapsed = time.monotonic() - started

    assert len(answers) == 20
    assert 0.4 <= elapsed < 1.5

    started = time.monotonic()
    claude(anthropic_client(fake_providers), extra_headers={"X-Fake-Latency-Ms": "250"})
    assert time.monotonic() - started >= 0.25


# --- Output and stall directives ------------------------------------------------------------------------

ANSWER_SCHEMA = Answer.model_json_schema()
# What `output=invalid` answers for Answer: every required field of the wrong type.
INVALID_ANSWER = {
    "steps": 5,
    "final_answer": 5,
    "confidence": "fake",
    "mood": 5,
    "nickname": 5,
    "due": 5,
    "attempts": "fake",
}


def openai_answer(client, schema=ANSWER_SCHEMA, name="answer", **kwargs):
    """The JSON value a json_schema request to the fake OpenAI answers."""
    response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    completion = chat(client, model="gpt-4.1-mini", response_format=response_format, **kwargs)
    return json.loads(completion.choices[0].message.content)


def gemini_answer(server, key="AIzaTest", **http_options):
    config = genai_types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=ANSWER_SCHEMA
    )
    response = gemini_generate(server, key, model="gemini-2.5-flash", contents=QUESTION, config=config, **http_options)
    return json.loads(response.text)


def fails_answer(value) -> bool:
    return not Draft202012Validator(ANSWER_SCHEMA).is_valid(value)


def test_output_invalid_answers_json_that_fails_the_schema_on_each_provider(fake_providers):
    openai_value = openai_answer(openai_client(fake_providers, key="sk-demo~output=invalid"))
    gemini_value = gemini_answer(fake_providers, key="AIzaDemo~output=invalid")
    gemini_openapi = gemini_generate(
        fake_providers,
        key="AIzaDemo~output=invalid",
        api_version="v1beta",
        model="gemini-2.5-flash",
        contents=QUESTION,
        config=genai_types.GenerateContentConfig(response_mime_type="application/json", response_schema=Answer),
    )
    tool = {"name": "record_answer", "input_schema": ANSWER_SCHEMA}
    tool_use = claude(
        anthropic_client(fake_providers),
        tools=[tool],
        tool_choice={"type": "tool", "name": "record_answer"},
        extra_headers={"X-Fake-Output": "invalid"},
    )

    for value in (openai_value, gemini_value, json.loads(gemini_openapi.text), tool_use.content[0].input):
        assert value == INVALID_ANSWER
        assert fails_answer(value)
    assert gemini_openapi.parsed is None  # the SDK could not parse it into an Answer
    # What the SDKs' parse helpers make of it: a validation error, not a parsed answer.
    with pytest.raises(pydantic.ValidationError):
        openai_client(fake_providers, key="sk-demo~output=invalid").chat.completions.parse(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": QUESTION}], response_format=Answer
        )
    with pytest.raises(pydantic.ValidationError):
        anthropic_client(fake_providers, key="sk-ant-demo~output=invalid").messages.parse(
            model="claude-haiku-4-5",
            max_tokens=2000,
            messages=[{"role": "user", "content": QUESTION}],
            output_format=Answer,
        )


def test_output_invalid_leaves_plain_answers_alone_and_a_header_switches_it_off(fake_providers):
    client = openai_client(fake_providers, key="sk-demo~output=invalid")

    assert chat(client).choices[0].message.content == reply_text("gpt-4o", QUESTION)
    Answer.model_validate(openai_answer(client, extra_headers={"X-Fake-Output": "valid"}))


def test_output_invalid_once_fails_only_the_first_request_per_key_and_schema(fake_providers):
    client = openai_client(fake_providers, key="sk-once-a~output=invalid-once")
    first, second, third = openai_answer(client), openai_answer(client), openai_answer(client)
    step_schema = Step.model_json_schema()
    other_schema = openai_answer(client, schema=step_schema, name="step")
    other_key = openai_answer(openai_client(fake_providers, key="sk-once-b~output=invalid-once"))

    assert first == INVALID_ANSWER
    Answer.model_validate(second)
    Answer.model_validate(third)
    assert other_schema == {"explanation": 5, "output": 5}  # a schema the key had not asked for yet
    assert other_key == INVALID_ANSWER  # another key: its own first time

    # Anthropic and Gemini alike; the header form too.
    anthropic_once = anthropic_client(fake_providers, key="sk-ant-once~output=invalid-once")
    parse = functools.partial(
        anthropic_once.messages.parse,
        model="claude-haiku-4-5",
        max_tokens=2000,
        messages=[{"role": "user", "content": QUESTION}],
        output_format=Answer,
    )
    with pytest.raises(pydantic.ValidationError):
        parse()
    assert isinstance(parse().parsed_output, Answer)
    once = {"X-Fake-Output": "invalid-once"}
    assert gemini_answer(fake_providers, key="AIzaOnceHeader", headers=once) == INVALID_ANSWER
    Answer.model_validate(gemini_answer(fake_providers, key="AIzaOnceHeader", headers=once))


def test_invalid_once_memory_is_bounded_and_forgets_the_oldest_first():
    seen = SeenOnce(limit=2)

    assert seen.first_time("sk-a", {"type": "object", "title": "A"})
    assert not seen.first_time("sk-a", {"title": "A", "type": "object"})  # the same schema, keys reordered
    assert seen.first_time("sk-a", {"title": "B"}) and seen.first_time("sk-b", {"title": "A"})
    assert len(seen) == 2
    assert seen.first_time("sk-a", {"type": "object", "title": "A"})  # forgotten: the oldest of three


def test_invalid_instance_breaks_required_fields_or_the_root_and_leaves_a_schema_that_takes_anything():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["a", "b"]},
            "score": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "free": {},
            "note": {"type": "string"},
        },
        "required": ["name", "kind", "score", "free"],
    }

    assert invalid_instance_from_schema(schema) == {
        "name": 5,
        "kind": 5,
        "score": "fake",
        "free": "fake free",  # takes anything: left valid
        "note": "fake note",  # not required: left valid
    }
    assert invalid_instance_from_schema({"type": "ARRAY", "items": {"type": "STRING"}}) == 5
    assert invalid_instance_from_schema(
        {"type": "OBJECT", "properties": {"a": {"type": "STRING", "nullable": True}}}
    ) == {"a": 5}
    assert invalid_instance_from_schema({}) == instance_from_schema({})


STALL_MS = 500
STALL = STALL_MS / 1000


def timed(items, started: float) -> list[tuple[float, Any]]:
    """(seconds since `started`, item) for each non-empty item (text or bytes) of `items`, as it arrives."""
    return [(time.monotonic() - started, item) for item in items if item]


def assert_stalled_after_the_first_delta(received: list[tuple[float, str]], expected: str) -> None:
    """The first delta came before the stall was over, the next one after it, the rest at once."""
    times = [at for at, _ in received]
    assert "".join(text for _, text in received) == expected
    assert received[0][1] == stream_pieces(expected)[0]
    assert times[0] < STALL <= times[1] * 1.05
    assert times[-1] - times[1] < STALL


def test_stall_sends_the_first_delta_then_waits_before_the_rest(fake_providers):
    started = time.monotonic()
    openai_stream = chat(openai_client(fake_providers, key=f"sk-demo~stall={STALL_MS}"), stream=True)
    from_openai = timed((chunk.choices[0].delta.content for chunk in openai_stream if chunk.choices), started)

    started = time.monotonic()
    with anthropic_client(fake_providers).messages.stream(
        model="claude-haiku-4-5",
        max_tokens=1000,
        messages=[{"role": "user", "content": QUESTION}],
        extra_headers={"X-Fake-Stall-Ms": str(STALL_MS)},
    ) as stream:
        from_anthropic = timed(stream.text_stream, started)

    client = gemini_client(fake_providers, key=f"AIzaDemo~stall={STALL_MS}")
    started = time.monotonic()
    gemini_stream = client.models.generate_content_stream(model="gemini-2.5-flash", contents=QUESTION)
    from_gemini = timed((chunk.text for chunk in gemini_stream), started)

    assert_stalled_after_the_first_delta(from_openai, reply_text("gpt-4o", QUESTION))
    assert_stalled_after_the_first_delta(from_anthropic, reply_text("claude-haiku-4-5", QUESTION))
    assert_stalled_after_the_first_delta(from_gemini, reply_text("gemini-2.5-flash", QUESTION))


def test_stall_on_a_gemini_json_array_stream_and_not_on_a_plain_answer(fake_providers):
    url = f"{fake_providers.gemini_base_url}/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    body = {"contents": [{"parts": [{"text": QUESTION}]}]}
    headers = {"x-goog-api-key": "AIzaTest", "X-Fake-Stall-Ms": str(STALL_MS)}
    started = time.monotonic()
    with httpx2.stream("POST", url, headers=headers, json=body) as stalled:
        received = timed(stalled.iter_bytes(), started)
    plain = httpx2.post(url, headers={"x-goog-api-key": "AIzaTest"}, json=body)

    (first_at, first), *rest = received
    assert first.startswith(b"[{") and b"\n,\r\n" not in first  # the first element alone
    assert rest and first_at < STALL <= rest[0][0] * 1.05  # before the stall was over, the rest after it
    whole = b"".join(part for _, part in received)
    assert whole.count(b"\n,\r\n") == plain.text.count("\n,\r\n") > 0  # framed as without the stall
    texts = [chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in json.loads(whole)]
    assert "".join(texts) == reply_text("gemini-2.0-flash", QUESTION)

    started = time.monotonic()
    completion = chat(openai_client(fake_providers, key="sk-demo~stall=5000"))
    assert time.monotonic() - started < 1  # a plain answer does not stall
    assert completion.choices[0].finish_reason == "stop"


# --- Pieces -----------------------------------------------------------------------------------------------


def test_schema_instance_handles_refs_unions_and_constraints():
    schema = {
        "$defs": {"Item": {"type": "object", "properties": {"sku": {"const": "A1"}}, "required": ["sku"]}},
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 3},
            "maybe": {"type": ["string", "null"], "maxLength": 4},
            "choice": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 10, "multipleOf": 5}]},
            "one": {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
            "both": {"allOf": [{"properties": {"a": {"type": "number"}}}, {"properties": {"b": {"enum": ["x"]}}}]},
            "when": {"type": "string", "format": "date-time"},
            "site": {"type": "string", "format": "uri"},
            "gemini": {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": "2"},
        },
    }

    value = instance_from_schema(schema)

    assert value["items"] == [{"sku": "A1"}] * 3
    assert isinstance(value["maybe"], str) and len(value["maybe"]) <= 4
    assert value["choice"] == 10
    assert value["one"] is True
    assert value["both"] == {"a": 1.0, "b": "x"}
    assert value["when"] == "2025-01-01T00:00:00Z" and value["site"].startswith("https://")
    assert value["gemini"] == ["fake gemini", "fake gemini 2"]


def test_schema_instance_stops_on_recursive_schemas():
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
                "required": ["children"],
            }
        },
        "$ref": "#/$defs/Node",
    }

    assert "children" in instance_from_schema(schema)


def test_count_input_follows_the_documented_formula():
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    chat_body = {
        "messages": [
            {"role": "system", "content": "abcde"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "abcd"}, {"type": "text", "text": "a"}, image],
            },
        ]
    }
    gemini_body = {
        "systemInstruction": {"parts": [{"text": "abcde"}]},
        "contents": [{"role": "user", "parts": [{"text": "abcd"}, {"inline_data": {"mime_type": "image/png"}}]}],
    }

    assert openai_input(chat_body) == (2 + 1 + 1 + 85, 1, "abcd a")
    assert gemini_input(gemini_body) == (2 + 1 + 258, 1, "abcd")


def test_the_command_refuses_a_non_loopback_host_without_allow_remote():
    with pytest.raises(CommandError, match="non-loopback"):
        call_command(fake_providers_command.Command(), host="0.0.0.0")

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.5")


def test_the_chunks_directive_splits_a_stream_into_that_many_text_deltas(fake_providers):
    import openai

    client = openai.OpenAI(api_key="sk-test-chunks~chunks=20", base_url=fake_providers.openai_base_url, max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Write a long cover letter for a staff engineer role, please. " * 5}],
        stream=True,
        max_tokens=1024,
    )

    texts = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]

    assert len(texts) == 20
