"""Fake OpenAI, mounted under /openai: POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}.

Point the SDK at it with `OpenAI(api_key=..., base_url=f"{server.url}/openai/v1")`. The SDK sends the key
as `Authorization: Bearer <key>`. Bodies and statuses follow recorded OpenAI answers: success bodies
pretty-printed with two spaces, error bodies with four; streams are `data: <json>\n\n` events ending with
`data: [DONE]`, with a final usage chunk (empty `choices`) when `stream_options.include_usage` is set.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .behaviour import SEEN_ONCE, Directives, KeyCheck, SeenOnce, check_key, hold_open, stream_pieces_for
from .catalogue import OPENAI_MODELS, OpenAIModel
from .generation import (
    OPENAI_IMAGE_TOKENS,
    json_text,
    reply_text,
    text_tokens,
    truncate,
)
from .generation import cached_tokens as cap_cached
from .schema_instance import instance_from_schema, invalid_instance_from_schema
from .wire import (
    CLIENT_MAX_SIZE,
    EVENT_STREAM,
    JSON,
    JSON_UTF8,
    drop,
    dumps,
    open_stream,
    random_id,
    read_json,
    respond,
    send_half,
)

KEY_PREFIX = "sk-"
CONTEXT_LENGTH = 128000
SYSTEM_FINGERPRINT = "fp_fake0000a1"


def mask_key(key: str) -> str:
    """Mask a key as OpenAI's 401 message does: first 8 and last 4 characters, a star for each other one."""
    if len(key) <= 12:
        return key[:2] + "*" * max(0, len(key) - 4) + key[-2:]
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


def count_input(body: dict) -> tuple[int, int, str]:
    """Return (input tokens, image count, last user text) for a chat request (see `generation`)."""
    tokens = images = 0
    prompt = ""
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        texts: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image_url":
                    images += 1
        tokens += sum(text_tokens(text) for text in texts)
        if message.get("role") == "user":
            prompt = " ".join(texts)
    return tokens + images * OPENAI_IMAGE_TOKENS, images, prompt


def usage(input_tokens: int, output_tokens: int, *, reasoning: bool, cached: int) -> dict:
    reasoning_tokens = 2 * output_tokens if reasoning else 0
    completion = output_tokens + reasoning_tokens
    return {
        "prompt_tokens": input_tokens,
        "completion_tokens": completion,
        "total_tokens": input_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cap_cached(cached, input_tokens), "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _headers() -> dict[str, str]:
    return {"x-request-id": f"req_{random_id(32)}", "openai-version": "2020-10-01"}


def error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    # OpenAI's encoder escapes <, > and & inside strings (the recorded 401 shows \u003c).
    encoded = dumps(body, indent=4).replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
    return respond(encoded, status=status, content_type=JSON_UTF8, headers={**_headers(), **(headers or {})})


def _key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _auth_error(key: str | None) -> web.Response | None:
    check = check_key(key, KEY_PREFIX)
    if check is KeyCheck.OK:
        return None
    if check is KeyCheck.MISSING:
        return error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
            "username) if you're accessing the API from your browser and are prompted for a username and "
            "password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
        )
    if check is KeyCheck.NO_PERMISSION:
        return error(
            403,
            "Country, region, or territory not supported",
            "request_forbidden",
            "unsupported_country_region_territory",
        )
    return error(
        401,
        f"Incorrect API key provided: {mask_key(key or '')}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


async def _admit(request: web.Request) -> tuple[Directives, web.Response | None]:
    key = _key(request)
    directives = Directives.parse(key, request.headers)
    await directives.wait()
    return directives, _auth_error(key)


def _unavailable() -> web.Response:
    return error(503, "The engine is currently overloaded, please try again later.", "server_error")


async def _failure(request: web.Request, fail: str | None, model: str, stream: bool) -> web.StreamResponse | None:
    """Answer with the injected failure, or return None to answer normally (also for `midstream`)."""
    if fail is None or fail == "midstream":
        return None
    if fail == "400":
        return error(
            400,
            f"This model's maximum context length is {CONTEXT_LENGTH} tokens. However, your messages resulted in "
            f"{CONTEXT_LENGTH + 1} tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    if fail == "429":
        return error(
            429,
            f"Rate limit reached for {model} in organization org-fake0000000000000000000 on requests per "
            "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more. You can increase your rate limit "
            "by adding a payment method to your account at https://platform.openai.com/account/billing.",
            "requests",
            "rate_limit_exceeded",
            headers={
                "retry-after": "1",
                "x-ratelimit-limit-requests": "3",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1s",
            },
        )
    if fail == "500":
        return error(500, "The server had an error while processing your request. Sorry about that!", "server_error")
    if fail in ("503", "529"):
        return _unavailable()
    if fail == "timeout":
        await hold_open()
        return _unavailable()
    # malformed
    if stream:
        response = await open_stream(request, EVENT_STREAM, _headers())
        await response.write(b'data: {"id":"chatcmpl-malformed","object":"chat.completion.chunk","choices":[{\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    return respond(
        b'{\n  "id": "chatcmpl-malformed",\n  "object": "chat.completion",\n  "choices": [\n',
        headers=_headers(),
    )


def _limit(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _output_text(request: web.Request, directives: Directives, body: dict, model: str, prompt: str, images: int) -> str:
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") or {}
            if directives.invalid_output(request.config_dict[SEEN_ONCE], _key(request), schema):
                return json_text(invalid_instance_from_schema(schema))
            return json_text(instance_from_schema(schema))
        if response_format.get("type") == "json_object":
            return json_text({"reply": reply_text(model, prompt, images)})
    return reply_text(model, prompt, images)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    directives, refusal = await _admit(request)
    if refusal is not None:
        return refusal
    body = await read_json(request)
    if not isinstance(body, dict):
        return error(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
            "help center at help.openai.com.)",
        )
    model = body.get("model")
    stream = body.get("stream") is True
    failed = await _failure(request, directives.fail, str(model), stream)
    if failed is not None:
        return failed
    if not isinstance(model, str) or not model:
        return error(400, "you must provide a model parameter")
    entry = OPENAI_MODELS.get(model)
    if entry is None:
        return error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error(
            400,
            "Missing required parameter: 'messages'.",
            code="missing_required_parameter",
            param="messages",
        )

    input_tokens, images, prompt = count_input(body)
    full_text = _output_text(request, directives, body, model, prompt, images)
    text, cut = truncate(full_text, _limit(body.get("max_completion_tokens")) or _limit(body.get("max_tokens")))
    finish = "length" if cut else "stop"
    counted = usage(input_tokens, text_tokens(text), reasoning=entry.reasoning, cached=directives.cached)
    completion_id = f"chatcmpl-{random_id(29)}"
    created = int(time.time())
    if stream:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return await _stream(
            request,
            entry,
            completion_id,
            created,
            text,
            finish,
            counted if include_usage else None,
            midstream=directives.fail == "midstream",
            directives=directives,
        )
    answer = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": entry.snapshot,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": counted,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if directives.fail == "midstream":
        await send_half(request, dumps(answer, indent=2), JSON, _headers())
    return respond(dumps(answer, indent=2), headers=_headers())


async def _stream(
    request: web.Request,
    entry: OpenAIModel,
    completion_id: str,
    created: int,
    text: str,
    finish: str,
    counted: dict | None,
    *,
    midstream: bool,
    directives: Directives,
) -> web.StreamResponse:
    head = (
        f'{{"id":"{completion_id}","object":"chat.completion.chunk","created":{created},'
        f'"model":"{entry.snapshot}","service_tier":"default","system_fingerprint":"{SYSTEM_FINGERPRINT}",'
        '"choices":'
    ).encode()
    tail = b',"usage":null}\n\n' if counted is not None else b"}\n\n"

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return b"data: " + head + dumps([choice]) + tail

    pieces = stream_pieces_for(text, directives)
    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in pieces]
    events.append(chunk({}, finish))
    if counted is not None:
        events.append(b"data: " + head + b'[],"usage":' + dumps(counted) + b"}\n\n")
    events.append(b"data: [DONE]\n\n")

    response = await open_stream(request, EVENT_STREAM, _headers())
    cut = 1 + max(1, len(pieces) // 2) if midstream else None
    for number, event in enumerate(events[:cut]):
        await response.write(event)
        if number == 1:  # the role chunk, then the first text delta
            await directives.stall()
    if midstream:
        drop(request)
    await response.write_eof()
    return response


def _model_object(entry: OpenAIModel) -> dict:
    return {"id": entry.id, "object": "model", "created": entry.created, "owned_by": entry.owned_by}


async def list_models(request: web.Request) -> web.StreamResponse:
    directives, refusal = await _admit(request)
    if refusal is not None:
        return refusal
    failed = await _failure(request, directives.fail, "models", False)
    if failed is not None:
        return failed
    data = [_model_object(entry) for entry in OPENAI_MODELS.values()]
    return respond(dumps({"object": "list", "data": data}, indent=2), headers=_headers())


async def retrieve_model(request: web.Request) -> web.StreamResponse:
    directives, refusal = await _admit(request)
    if refusal is not None:
        return refusal
    model = request.match_info["model"]
    failed = await _failure(request, directives.fail, model, False)
    if failed is not None:
        return failed
    entry = OPENAI_MODELS.get(model)
    if entry is None:
        return error(404, f"The model '{model}' does not exist", code="model_not_found", param="model")
    return respond(dumps(_model_object(entry), indent=2), headers=_headers())


async def unknown_route(request: web.Request) -> web.Response:
    path = request.path.removeprefix("/openai")
    return error(404, f"Invalid URL ({request.method} {path})")


def build_app() -> web.Application:
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[SEEN_ONCE] = SeenOnce()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models, allow_head=False)
    app.router.add_get("/v1/models/{model}", retrieve_model, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", unknown_route)
    return app
