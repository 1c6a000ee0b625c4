"""Refusing request bodies over the limit before the application reads them: the outermost ASGI layer.

Django reads a request's whole body before it calls the view (an anonymous 300 MB body was read in full before its
401), and answers an oversized one with a bare HTML 400 at best. `BodyLimit` looks at `Content-Length` first: over
the limit, the answer is a JSON 413 naming the limit, and not a byte of the body is read. A body streamed in
without one (chunked) is counted as the application reads it; the chunk that passes the limit is never handed
on: the client gets the 413 and the application a disconnect, as if the client had gone away.

Its cost on a request under the limit is a look through the headers for `Content-Length` and a dictionary lookup
of the path: no allocation, no wrapper around `receive` or `send` (the task endpoints' CPU budget is about a
millisecond per call). Only a body without a length gets the counting wrapper.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Limit:
    """A body limit in bytes and the words that name where it comes from (a setting), for the 413."""

    __slots__ = ("bytes", "source")

    def __init__(self, limit: int, source: str):
        self.bytes = limit
        self.source = source

    def message(self) -> str:
        return f"The request body is over the limit of {self.bytes} bytes ({self.source})."


def too_large(limit: Limit) -> tuple[dict[str, Any], dict[str, Any]]:
    """The 413's two ASGI messages. Its body answers both kinds of client: `detail` as the DRF endpoints answer,
    `error` as the task endpoints do."""
    message = limit.message()
    body = json.dumps(
        {"detail": message, "error": {"type": "input_too_large", "message": message, "limit": limit.bytes}}
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            # The rest of the body is never read, so the connection cannot carry another request.
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class BodyLimit:
    """ASGI middleware: refuse HTTP request bodies over `default` bytes, or over `by_path[path]` for the paths
    named there (exact paths, without the root path), with a JSON 413 naming the limit."""

    def __init__(self, app: ASGIApp, *, default: Limit, by_path: Mapping[str, Limit] | None = None):
        self.app = app
        self.default = default
        self.by_path = dict(by_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root) :]
        limit = self.by_path.get(path, self.default)
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    break  # the server's parser refuses a malformed length before we ever see one
                if length > limit.bytes:
                    start, body = too_large(limit)
                    await send(start)
                    return await send(body)
                return await self.app(scope, receive, send)
            if name == b"transfer-encoding":
                chunked = True
        if not chunked:
            # Neither a length nor chunks: there is no body.
            return await self.app(scope, receive, send)
        return await _Counted(self.app, limit, receive, send).run(scope)


class _Counted:
    """One request whose body streams in without a length: its bytes counted as the application reads them."""

    __slots__ = ("app", "limit", "receive", "send", "received", "refused", "started")

    def __init__(self, app: ASGIApp, limit: Limit, receive: Receive, send: Send):
        self.app = app
        self.limit = limit
        self.receive = receive
        self.send = send
        self.received = 0
        self.refused = False
        self.started = False

    async def run(self, scope: Scope) -> None:
        await self.app(scope, self.counted_receive, self.guarded_send)

    async def counted_receive(self) -> dict[str, Any]:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit.bytes:
                self.refused = True
                if not self.started:
                    start, body = too_large(self.limit)
                    await self.send(start)
                    await self.send(body)
                # To the application, the client went away: it stops reading and answers nobody.
                return {"type": "http.disconnect"}
        return message

    async def guarded_send(self, message: dict[str, Any]) -> None:
        if self.refused:
            return  # the 413 has been sent (or the response was cut short): nothing more goes out
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)
