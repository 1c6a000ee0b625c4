"""Driving the application at the ASGI level in tests, as uvicorn drives it."""

import asyncio


def http_scope(
    path: str, *, method: str = "POST", headers: dict[str, str] | None = None, host: str = "testserver", scheme="http"
) -> dict:
    """The ASGI scope of one HTTP/1.1 request from a loopback client, with a JSON content type and `headers`."""
    all_headers = [(b"host", host.encode()), (b"content-type", b"application/json")]
    all_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": all_headers,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }


async def asgi_exchange(
    application, scope: dict, body: bytes = b"", *, disconnect_when=None, leave_after: float | None = None
) -> list[dict]:
    """Send one request (`scope` and `body`) to an ASGI `application`; return the messages it sent.

    By default the client's disconnect is reported once the response is complete, as uvicorn does. With
    `disconnect_when(message, sent)`, the client goes away after the first message for which it says so: the
    disconnect is reported and that `send` never returns, as with a socket whose buffer is full (the handler
    cancels it). With `leave_after`, the client goes away that many seconds after sending the request."""
    gone = asyncio.Event()
    if leave_after is not None:
        asyncio.get_running_loop().call_later(leave_after, gone.set)
    sent: list[dict] = []
    given = False

    async def receive():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if disconnect_when is None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                gone.set()
        elif disconnect_when(message, sent):
            gone.set()
            await asyncio.sleep(60)  # never delivered: the handler cancels us

    await application(scope, receive, send)
    return sent


def asgi_request(application, scope: dict, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """`asgi_exchange` in an event loop of its own; return (status, headers, body)."""
    sent = asyncio.run(asgi_exchange(application, scope, body))
    start = sent[0]
    response_headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    content = b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], response_headers, content
