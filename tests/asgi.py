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


def asgi_request(application, scope: dict, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send one request (`scope` and `body`) to an ASGI `application` in an event loop of its own, reporting the
    client's disconnect once the response is complete, as uvicorn does; return (status, headers, body)."""
    sent: list[dict] = []

    async def run():
        done = asyncio.Event()
        given = False

        async def receive():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await application(scope, receive, send)

    asyncio.run(run())
    start = sent[0]
    response_headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    content = b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], response_headers, content
