"""HTTP plumbing shared by the three fake providers: bodies, event streams, dropped connections."""

from __future__ import annotations

import json
import secrets
from typing import Any, NoReturn

from aiohttp import web

JSON = "application/json"
JSON_UTF8 = "application/json; charset=utf-8"
EVENT_STREAM = "text/event-stream; charset=utf-8"

# Requests carry base64 images; the real APIs accept tens of megabytes.
CLIENT_MAX_SIZE = 64 * 1024 * 1024


def dumps(value: Any, indent: int | None = None, compact: bool = True) -> bytes:
    if indent is not None:
        return (json.dumps(value, indent=indent, ensure_ascii=False) + "\n").encode()
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(value, separators=separators, ensure_ascii=False).encode()


def respond(
    body: bytes, *, status: int = 200, content_type: str = JSON, headers: dict[str, str] | None = None
) -> web.Response:
    all_headers = {"Content-Type": content_type}
    if headers:
        all_headers.update(headers)
    return web.Response(body=body, status=status, headers=all_headers)


def random_id(length: int = 24) -> str:
    return secrets.token_urlsafe(length)[:length].replace("-", "a").replace("_", "b")


async def read_json(request: web.Request) -> Any:
    """Return the parsed JSON body, or None when it is missing or not JSON."""
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def open_stream(request: web.Request, content_type: str, headers: dict[str, str] | None = None):
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    if headers:
        response.headers.update(headers)
    await response.prepare(request)
    return response


def drop(request: web.Request) -> NoReturn:
    """Cut the connection mid-answer, so the client sees an incomplete body."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise DroppedConnection


class DroppedConnection(Exception):
    """Raised after the fake cut a connection on purpose; the app swallows it."""


async def send_half(request: web.Request, body: bytes, content_type: str, headers: dict[str, str]) -> NoReturn:
    """Announce the full length, send half of `body`, then drop the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type, **headers})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    drop(request)


@web.middleware
async def swallow_dropped(request: web.Request, handler):
    try:
        return await handler(request)
    except (DroppedConnection, ConnectionResetError):
        # The fake cut the connection, or the client left mid-stream (it may stop reading whenever it likes).
        # Nothing can be sent any more; answering keeps aiohttp from logging a handler error.
        return web.Response(status=499)
