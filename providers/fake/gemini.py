"""Fake Gemini (Google AI Studio), mounted under /gemini: POST /{v}/models/{model}:generateContent,
POST /{v}/models/{model}:streamGenerateContent[?alt=sse], POST /{v}/models/{model}:countTokens,
GET /{v}/models, GET /{v}/models/{model}, where {v} is v1beta, v1 or v1alpha.

google-genai 3.x calls `v1` unless told otherwise (HttpOptions(api_version=...) or
GOOGLE_GENAI_API_VERSION), so both paths answer alike. Point it here with
`genai.Client(api_key=..., http_options=types.HttpOptions(base_url=f"{server.url}/gemini"))`. The SDK sends
the key as `x-goog-api-key`; `?key=` is read too. Success and error bodies are pretty-printed with two
spaces; `alt=sse` events are `data: <json>\r\n\r\n`, and any error on such a request is plain JSON with
the `text/event-stream` content type, as the real service sends it. Both camelCase and snake_case request
fields are read (the SDK mixes them, e.g. `inlineData.mime_type`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .behaviour import SEEN_ONCE, Directives, KeyCheck, SeenOnce, check_key, hold_open, stream_pieces_for
from .catalogue import GEMINI_MODELS
from .generation import GEMINI_IMAGE_TOKENS, json_text, reply_text, text_tokens, truncate
from .generation import cached_tokens as cap_cached
from .schema_instance import instance_from_schema, invalid_instance_from_schema
from .wire import CLIENT_MAX_SIZE, drop, dumps, open_stream, random_id, read_json, respond, send_half

KEY_PREFIX = "AIza"
JSON_UTF8 = "application/json; charset=UTF-8"
SSE = "text/event-stream"
VERSIONS = ("v1beta", "v1", "v1alpha")

_API_KEY_INVALID = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": "API key not valid. Please pass a valid API key.",
            },
        ],
    }
}


def error(
    code: int, status: str, message: str, *, sse: bool = False, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "status": status}}
    return respond(dumps(body, indent=2), status=code, content_type=SSE if sse else JSON_UTF8, headers=headers)


def _field(mapping: Any, camel: str, snake: str) -> Any:
    if not isinstance(mapping, dict):
        return None
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def _key(request: web.Request) -> str | None:
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    return key.strip() if key else None


def _auth_error(key: str | None, sse: bool) -> web.Response | None:
    check = check_key(key, KEY_PREFIX)
    if check is KeyCheck.OK:
        return None
    if check is KeyCheck.MISSING:
        return error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
            sse=sse,
        )
    if check is KeyCheck.NO_PERMISSION:
        return error(403, "PERMISSION_DENIED", "The caller does not have permission", sse=sse)
    return respond(dumps(_API_KEY_INVALID, indent=2), status=400, content_type=SSE if sse else JSON_UTF8)


async def _admit(request: web.Request, sse: bool) -> tuple[Directives, web.Response | None]:
    key = _key(request)
    directives = Directives.parse(key, request.headers)
    await directives.wait()
    return directives, _auth_error(key, sse)


def _unavailable(sse: bool) -> web.Response:
    return error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.", sse=sse)


async def _failure(request: web.Request, fail: str | None, sse: bool, streaming: bool) -> web.StreamResponse | None:
    """Answer with the injected failure, or return None to answer normally (also for `midstream`)."""
    if fail is None or fail == "midstream":
        return None
    if fail == "400":
        return error(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).",
            sse=sse,
        )
    if fail == "429":
        return error(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource exhausted. Please try again later. Please refer to https://cloud.google.com/vertex-ai/"
            "generative-ai/docs/error-code-429 for more details.",
            sse=sse,
            headers={"retry-after": "1"},
        )
    if fail == "500":
        return error(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting",
            sse=sse,
        )
    if fail in ("503", "529"):
        return _unavailable(sse)
    if fail == "timeout":
        await hold_open()
        return _unavailable(sse)
    # malformed
    if sse:
        response = await open_stream(request, SSE)
        await response.write(b'data: {"candidates": [{"content": {"parts": [{"text": \r\n\r\n')
        await response.write_eof()
        return response
    if streaming:
        return respond(b'[{\n  "candidates": [\n    {\n', content_type=JSON_UTF8)
    return respond(b'{\n  "candidates": [\n    {\n      "content": {\n', content_type=JSON_UTF8)


def _parts_text(parts: Any, counter: list[int]) -> list[str]:
    texts: list[str] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        elif _field(part, "inlineData", "inline_data") is not None or _field(part, "fileData", "file_data") is not None:
            counter[0] += 1
    return texts


def count_input(body: dict) -> tuple[int, int, str]:
    """Return (input tokens, image count, last user text) for a generateContent request (see generation)."""
    images = [0]
    system = _field(body, "systemInstruction", "system_instruction")
    if isinstance(system, str):
        texts = [system]
    else:
        texts = _parts_text(system.get("parts") if isinstance(system, dict) else None, images)
    prompt = ""
    for content in body.get("contents") or []:
        if not isinstance(content, dict):
            continue
        content_texts = _parts_text(content.get("parts"), images)
        texts += content_texts
        if content.get("role", "user") == "user":
            prompt = " ".join(content_texts)
    return sum(text_tokens(text) for text in texts) + images[0] * GEMINI_IMAGE_TOKENS, images[0], prompt


def _details(text: int, image: int) -> list[dict]:
    details = [{"modality": "TEXT", "tokenCount": text}]
    if image:
        details.append({"modality": "IMAGE", "tokenCount": image})
    return details


def usage_metadata(
    input_tokens: int, images: int, output_tokens: int, *, thinking: bool, cached: int
) -> dict[str, Any]:
    thoughts = 2 * output_tokens if thinking else 0
    metadata: dict[str, Any] = {"promptTokenCount": input_tokens}
    cached = cap_cached(cached, input_tokens)
    if cached:
        metadata["cachedContentTokenCount"] = cached
    metadata["candidatesTokenCount"] = output_tokens
    metadata["totalTokenCount"] = input_tokens + output_tokens + thoughts
    image_tokens = images * GEMINI_IMAGE_TOKENS
    metadata["promptTokensDetails"] = _details(input_tokens - image_tokens, image_tokens)
    if thoughts:
        metadata["thoughtsTokenCount"] = thoughts
    return metadata


def _output_text(
    request: web.Request, directives: Directives, config: Any, model: str, prompt: str, images: int
) -> str:
    mime = _field(config, "responseMimeType", "response_mime_type")
    if mime == "application/json":
        schema = _field(config, "responseJsonSchema", "response_json_schema")
        if schema is None:
            schema = _field(config, "responseSchema", "response_schema")
        if isinstance(schema, dict):
            if directives.invalid_output(request.config_dict[SEEN_ONCE], _key(request), schema):
                return json_text(invalid_instance_from_schema(schema))
            return json_text(instance_from_schema(schema))
        return json_text({"reply": reply_text(model, prompt, images)})
    return reply_text(model, prompt, images)


def _thinks(entry: dict, config: Any) -> bool:
    budget = _field(_field(config, "thinkingConfig", "thinking_config"), "thinkingBudget", "thinking_budget")
    return bool(entry.get("thinking")) and budget != 0


def _limit(config: Any) -> int | None:
    value = _field(config, "maxOutputTokens", "max_output_tokens")
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _not_found(model: str, version: str, method: str, sse: bool = False) -> web.Response:
    return error(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version {version}, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods.",
        sse=sse,
    )


async def model_action(request: web.Request) -> web.StreamResponse:
    version = request.match_info["version"]
    model, _, action = request.match_info["name"].partition(":")
    sse = action == "streamGenerateContent" and request.query.get("alt") == "sse"
    if action not in ("generateContent", "streamGenerateContent", "countTokens"):
        return error(404, "NOT_FOUND", f"Method not found: {action or request.method}.", sse=sse)
    directives, refusal = await _admit(request, sse)
    if refusal is not None:
        return refusal
    body = await read_json(request)
    if not isinstance(body, dict):
        return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", sse=sse)
    failed = await _failure(request, directives.fail, sse, action == "streamGenerateContent")
    if failed is not None:
        return failed
    entry = GEMINI_MODELS.get(model)
    if entry is None:
        return _not_found(model, version, action, sse)
    if action == "countTokens":
        inner = _field(body, "generateContentRequest", "generate_content_request")
        tokens, images, _ = count_input(inner if isinstance(inner, dict) else body)
        image_tokens = images * GEMINI_IMAGE_TOKENS
        answer = {"totalTokens": tokens, "promptTokensDetails": _details(tokens - image_tokens, image_tokens)}
        return respond(dumps(answer, indent=2), content_type=JSON_UTF8)
    if not body.get("contents"):
        return error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n", sse=sse)

    input_tokens, images, prompt = count_input(body)
    config = _field(body, "generationConfig", "generation_config")
    text, cut = truncate(_output_text(request, directives, config, model, prompt, images), _limit(config))
    thinking = _thinks(entry, config)
    metadata = usage_metadata(input_tokens, images, text_tokens(text), thinking=thinking, cached=directives.cached)
    response_id = random_id(23)
    finish = "MAX_TOKENS" if cut else "STOP"
    midstream = directives.fail == "midstream"
    if action == "generateContent":
        answer = _chunk(text, finish, metadata, model, response_id)
        if midstream:
            await send_half(request, dumps(answer, indent=2), JSON_UTF8, {})
        return respond(dumps(answer, indent=2), content_type=JSON_UTF8)

    chunks = []
    pieces = stream_pieces_for(text, directives)
    so_far = ""
    for number, piece in enumerate(pieces, 1):
        so_far += piece
        last = number == len(pieces)
        partial = usage_metadata(input_tokens, images, text_tokens(so_far), thinking=thinking, cached=directives.cached)
        chunks.append(_chunk(piece, finish if last else None, metadata if last else partial, model, response_id))
    if not sse:
        # Without alt=sse the real service streams one JSON array, its elements separated by ",\r\n".
        encoded = [dumps(chunk, indent=2)[:-1] for chunk in chunks]
        body_bytes = b"[" + b"\n,\r\n".join(encoded) + b"\n]"
        if midstream:
            await send_half(request, body_bytes, JSON_UTF8, {})
        if not directives.stall_ms:
            return respond(body_bytes, content_type=JSON_UTF8)
        response = await open_stream(request, JSON_UTF8)
        await response.write(b"[" + encoded[0])
        await directives.stall()
        await response.write(b"".join(b"\n,\r\n" + element for element in encoded[1:]) + b"\n]")
        await response.write_eof()
        return response
    response = await open_stream(request, SSE)
    events = [b"data: " + dumps(chunk, compact=False) + b"\r\n\r\n" for chunk in chunks]
    cut = max(1, len(events) // 2) if midstream else None
    for number, event in enumerate(events[:cut]):
        await response.write(event)
        if number == 0:  # the first chunk carries the first delta
            await directives.stall()
    if midstream:
        drop(request)
    await response.write_eof()
    return response


def _chunk(text: str, finish: str | None, metadata: dict, model: str, response_id: str) -> dict:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": metadata,
        "modelVersion": model,
        "responseId": response_id,
    }


async def list_models(request: web.Request) -> web.StreamResponse:
    directives, refusal = await _admit(request, False)
    if refusal is not None:
        return refusal
    failed = await _failure(request, directives.fail, False, False)
    if failed is not None:
        return failed
    try:
        size = int(request.query.get("pageSize", "50"))
        start = int(request.query.get("pageToken", "0") or 0)
    except ValueError:
        return error(400, "INVALID_ARGUMENT", "Invalid page size or page token.")
    size = 50 if size <= 0 else min(size, 1000)
    models = list(GEMINI_MODELS.values())
    page: dict[str, Any] = {"models": models[start : start + size]}
    if start + size < len(models):
        page["nextPageToken"] = str(start + size)
    return respond(dumps(page, indent=2), content_type=JSON_UTF8)


async def get_model(request: web.Request) -> web.StreamResponse:
    directives, refusal = await _admit(request, False)
    if refusal is not None:
        return refusal
    failed = await _failure(request, directives.fail, False, False)
    if failed is not None:
        return failed
    model = request.match_info["name"]
    entry = GEMINI_MODELS.get(model)
    if entry is None:
        return _not_found(model, request.match_info["version"], "get")
    return respond(dumps(entry, indent=2), content_type=JSON_UTF8)


async def unknown_route(request: web.Request) -> web.Response:
    return error(404, "NOT_FOUND", f"Requested entity was not found: {request.path.removeprefix('/gemini')}")


def build_app() -> web.Application:
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[SEEN_ONCE] = SeenOnce()
    version = "{version:" + "|".join(VERSIONS) + "}"
    app.router.add_get(f"/{version}/models", list_models, allow_head=False)
    app.router.add_get(f"/{version}/models/{{name:[^/:]+}}", get_model, allow_head=False)
    app.router.add_post(f"/{version}/models/{{name:[^/]+}}", model_action)
    app.router.add_route("*", "/{tail:.*}", unknown_route)
    return app
