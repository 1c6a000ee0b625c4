"""Fake Anthropic, mounted under /anthropic: POST /v1/messages, POST /v1/messages/count_tokens,
GET /v1/models, GET /v1/models/{id}.

Point the SDK at it with `Anthropic(api_key=..., base_url=f"{server.url}/anthropic")`. anthropic 2.x sends
the key as `Authorization: Bearer <key>`; older clients send `x-api-key`; both are read. Bodies are compact
JSON; streams are `event: <name>\ndata: <json>\n\n` events in the real order (message_start,
content_block_start, ping, content_block_delta..., content_block_stop, message_delta with the final usage,
message_stop), with the data lines padded with spaces the way the real service pads them.

Structured output: `output_config.format = {"type": "json_schema", "schema": ...}` (what
`messages.parse(..., output_format=Model)` sends) or the older top-level `output_format`; the reply is one
text block of JSON. A forced tool (`tool_choice` of type `tool`, or `any`) is answered with a `tool_use`
block whose input fits the tool's `input_schema` (stop_reason `tool_use`; its output tokens are text_tokens
of the compact input JSON; never cut).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .behaviour import SEEN_ONCE, Directives, KeyCheck, SeenOnce, check_key, hold_open, stream_pieces_for
from .catalogue import ANTHROPIC_LISTED, ANTHROPIC_MODELS
from .generation import (
    ANTHROPIC_URL_IMAGE_TOKENS,
    anthropic_image_tokens,
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
    drop,
    dumps,
    open_stream,
    random_id,
    read_json,
    respond,
    send_half,
)

KEY_PREFIX = "sk-ant-"


def _headers() -> dict[str, str]:
    return {"request-id": f"req_011C{random_id(20)}"}


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return respond(dumps(body), status=status, content_type=JSON, headers={**_headers(), **(headers or {})})


def _key(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _auth_error(key: str | None) -> web.Response | None:
    check = check_key(key, KEY_PREFIX)
    if check is KeyCheck.OK:
        return None
    if check is KeyCheck.MISSING:
        return error(401, "authentication_error", "x-api-key header is required")
    if check is KeyCheck.NO_PERMISSION:
        return error(403, "permission_error", "Your API key does not have permission to use the specified resource.")
    # The recorded body; the real service says "invalid x-api-key" whichever header carried the key.
    return error(401, "authentication_error", "invalid x-api-key")


async def _admit(request: web.Request) -> tuple[Directives, web.Response | None]:
    key = _key(request)
    directives = Directives.parse(key, request.headers)
    await directives.wait()
    return directives, _auth_error(key)


def _overloaded() -> web.Response:
    return error(529, "overloaded_error", "Overloaded")


async def _failure(request: web.Request, fail: str | None, stream: bool) -> web.StreamResponse | None:
    """Answer with the injected failure, or return None to answer normally (also for `midstream`)."""
    if fail is None or fail == "midstream":
        return None
    if fail == "400":
        return error(400, "invalid_request_error", "prompt is too long: 200001 tokens > 200000 maximum")
    if fail == "429":
        return error(
            429,
            "rate_limit_error",
            "Number of requests has exceeded your per-minute rate limit "
            "(https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage. "
            "Please try again later or contact sales at https://www.anthropic.com/contact-sales to discuss "
            "your options for a rate limit increase.",
            headers={
                "retry-after": "1",
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
            },
        )
    if fail == "500":
        return error(500, "api_error", "Internal server error")
    if fail == "503":
        return error(503, "api_error", "Service unavailable")
    if fail == "529":
        return _overloaded()
    if fail == "timeout":
        await hold_open()
        return _overloaded()
    # malformed
    if stream:
        response = await open_stream(request, EVENT_STREAM, _headers())
        await response.write(b'event: message_start\ndata: {"type":"message_start","message":{"model":\n\n')
        await response.write_eof()
        return response
    return respond(b'{"model":"claude","id":"msg_malformed","type":"message","content":[{"type":"text","text":"')


def _texts(content: Any, images: list[int]) -> list[str]:
    """Collect the text of a message's content; append each image's token cost to `images`."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if not isinstance(content, list):
        return texts
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "image":
            source = block.get("source") or {}
            if source.get("type") == "base64":
                images.append(anthropic_image_tokens(str(source.get("data", ""))))
            else:
                images.append(ANTHROPIC_URL_IMAGE_TOKENS)
        elif kind == "tool_result":
            texts += _texts(block.get("content"), images)
    return texts


def count_input(body: dict) -> tuple[int, int, str]:
    """Return (input tokens, image count, last user text) for a Messages request (see `generation`)."""
    images: list[int] = []
    texts = _texts(body.get("system"), images)
    prompt = ""
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        message_texts = _texts(message.get("content"), images)
        texts += message_texts
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                prompt = content
            elif isinstance(content, list):
                prompt = " ".join(
                    block["text"]
                    for block in content
                    if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
                )
    return sum(text_tokens(text) for text in texts) + sum(images), len(images), prompt


def _schema(body: dict) -> dict | None:
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if not isinstance(fmt, dict):
        fmt = body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


def _forced_tool(body: dict) -> dict | None:
    choice = body.get("tool_choice")
    tools = [tool for tool in body.get("tools") or [] if isinstance(tool, dict)]
    if not isinstance(choice, dict) or not tools:
        return None
    if choice.get("type") == "any":
        return tools[0]
    if choice.get("type") == "tool":
        return next((tool for tool in tools if tool.get("name") == choice.get("name")), None)
    return None


def usage(input_tokens: int, output_tokens: int, cached: int) -> dict:
    read = cap_cached(cached, input_tokens)
    return {
        "input_tokens": input_tokens - read,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
        "inference_geo": "not_available",
    }


def _field_required(body: dict) -> str | None:
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool) or body["max_tokens"] < 1:
        return "max_tokens: Input should be a valid integer greater than or equal to 1"
    if not isinstance(body["messages"], list) or not body["messages"]:
        return "messages: at least one message is required"
    return None


async def _read_request(request: web.Request) -> tuple[Directives, dict | None, web.StreamResponse | None]:
    directives, refusal = await _admit(request)
    if refusal is not None:
        return directives, None, refusal
    body = await read_json(request)
    if not isinstance(body, dict):
        return (
            directives,
            None,
            error(400, "invalid_request_error", "There was an issue with your request body."),
        )
    failed = await _failure(request, directives.fail, body.get("stream") is True)
    if failed is not None:
        return directives, None, failed
    return directives, body, None


async def messages(request: web.Request) -> web.StreamResponse:
    directives, body, answered = await _read_request(request)
    if body is None:
        return answered
    problem = _field_required(body)
    if problem:
        return error(400, "invalid_request_error", problem)
    model = body["model"]
    entry = ANTHROPIC_MODELS.get(model) if isinstance(model, str) else None
    if entry is None:
        return error(404, "not_found_error", f"model: {model}")

    input_tokens, images, prompt = count_input(body)
    seen, key = request.config_dict[SEEN_ONCE], _key(request)

    def structured(schema: Any) -> Any:
        if directives.invalid_output(seen, key, schema):
            return invalid_instance_from_schema(schema)
        return instance_from_schema(schema)

    tool = _forced_tool(body)
    if tool is not None:
        tool_input = structured(tool.get("input_schema") or {"type": "object"})
        block = {
            "type": "tool_use",
            "id": f"toolu_01{random_id(22)}",
            "name": tool.get("name"),
            "input": tool_input,
        }
        text, stop_reason = json_text(tool_input), "tool_use"
    else:
        schema = _schema(body)
        full = json_text(structured(schema)) if schema is not None else reply_text(model, prompt, images)
        text, cut = truncate(full, body["max_tokens"])
        block = {"type": "text", "text": text}
        stop_reason = "max_tokens" if cut else "end_turn"
    counted = usage(input_tokens, text_tokens(text), directives.cached)
    message = {
        "model": entry.snapshot,
        "id": f"msg_01{random_id(22)}",
        "type": "message",
        "role": "assistant",
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "stop_details": None,
        "usage": counted,
    }
    midstream = directives.fail == "midstream"
    if body.get("stream") is True:
        return await _stream(request, message, text, midstream=midstream, directives=directives)
    if midstream:
        await send_half(request, dumps(message), JSON, _headers())
    return respond(dumps(message), headers=_headers())


def _event(name: str, data: dict, padding: int = 0) -> bytes:
    encoded = dumps(data)
    if padding:
        encoded = encoded[:-1] + b" " * padding + b"}"
    return b"event: " + name.encode() + b"\ndata: " + encoded + b"\n\n"


async def _stream(
    request: web.Request, message: dict, text: str, *, midstream: bool, directives: Directives
) -> web.StreamResponse:
    block = message["content"][0]
    counted = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "stop_details": None,
        "usage": {**counted, "output_tokens": 1},
    }
    if block["type"] == "tool_use":
        first = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in ["", *_slices(text)]]
    else:
        first = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in stream_pieces_for(text, directives)]
    events = [
        _event("message_start", {"type": "message_start", "message": start}, 1),
        _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": first}, 15),
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    events += [
        _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}, 15)
        for delta in deltas
    ]
    final_usage = {
        key: counted[key] for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    }
    final_usage["output_tokens"] = counted["output_tokens"]
    events += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}, 4),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": message["stop_reason"],
                    "stop_sequence": None,
                    "stop_details": None,
                },
                "usage": final_usage,
            },
        ),
        _event("message_stop", {"type": "message_stop"}, 3),
    ]
    response = await open_stream(request, EVENT_STREAM, _headers())
    cut = 3 + max(1, len(deltas) // 2) if midstream else None
    for number, event in enumerate(events[:cut]):
        await response.write(event)
        if number == 3:  # message_start, content_block_start and ping, then the first delta
            await directives.stall()
    if midstream:
        drop(request)
    await response.write_eof()
    return response


def _slices(text: str, parts: int = 3) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


async def count_tokens(request: web.Request) -> web.StreamResponse:
    _, body, answered = await _read_request(request)
    if body is None:
        return answered
    for name in ("model", "messages"):
        if name not in body:
            return error(400, "invalid_request_error", f"{name}: Field required")
    if not isinstance(body["model"], str) or ANTHROPIC_MODELS.get(body["model"]) is None:
        return error(404, "not_found_error", f"model: {body['model']}")
    return respond(dumps({"input_tokens": count_input(body)[0]}), headers=_headers())


async def list_models(request: web.Request) -> web.StreamResponse:
    directives, refusal = await _admit(request)
    if refusal is not None:
        return refusal
    failed = await _failure(request, directives.fail, False)
    if failed is not None:
        return failed
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "20"))))
    except ValueError:
        return error(400, "invalid_request_error", "limit: Input should be a valid integer")
    ids = [entry.snapshot for entry in ANTHROPIC_LISTED]
    models = ANTHROPIC_LISTED
    after, before = request.query.get("after_id"), request.query.get("before_id")
    if before in ids:
        models = models[: ids.index(before)][-limit:]
        has_more = len(ANTHROPIC_LISTED[: ids.index(before)]) > limit
    else:
        start = ids.index(after) + 1 if after in ids else 0
        models = models[start : start + limit]
        has_more = start + limit < len(ANTHROPIC_LISTED)
    data = [entry.info() for entry in models]
    page = {
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "has_more": has_more,
        "last_id": data[-1]["id"] if data else None,
    }
    return respond(dumps(page), headers=_headers())


async def retrieve_model(request: web.Request) -> web.StreamResponse:
    directives, refusal = await _admit(request)
    if refusal is not None:
        return refusal
    failed = await _failure(request, directives.fail, False)
    if failed is not None:
        return failed
    model = request.match_info["model"]
    entry = ANTHROPIC_MODELS.get(model)
    if entry is None:
        return error(404, "not_found_error", f"model: {model}")
    return respond(dumps(entry.info()), headers=_headers())


async def unknown_route(request: web.Request) -> web.Response:
    return error(404, "not_found_error", "Not Found")


def build_app() -> web.Application:
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[SEEN_ONCE] = SeenOnce()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", list_models, allow_head=False)
    app.router.add_get("/v1/models/{model}", retrieve_model, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", unknown_route)
    return app
