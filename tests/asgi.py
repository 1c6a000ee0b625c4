"""Driving the application at the ASGI level in tests, as uvicorn drives it."""


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
