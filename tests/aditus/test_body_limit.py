"""Bodies over the limit are refused from their Content-Length, or cut off while streaming in, before the
application reads them: a JSON 413 naming the limit, on every path."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.conf import settings

from aditus.body_limit import BodyLimit, Limit
from tests.asgi import http_scope

TOKEN_URL = "/api/v1/auth/token"
IMAGE_URL = "/api/v1/job-extractor/validate-image"
PATHS = [TOKEN_URL, "/api/v1/super-admin/providers/configs", "/api/v1/job-extractor/extract", "/admin/login/", "/x"]


class Client:
    """One request sent in `chunks`, recording how many of them the application took and what it answered."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = list(chunks)
        self.taken = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.taken < len(self.chunks):
            self.taken += 1
            return {
                "type": "http.request",
                "body": self.chunks[self.taken - 1],
                "more_body": self.taken < len(self.chunks),
            }
        await asyncio.sleep(3600)  # the client waits for its answer
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    def json(self) -> dict:
        return json.loads(b"".join(message.get("body", b"") for message in self.sent[1:]))


def run(application, path: str, chunks: list[bytes], *, length: int | None = None, method: str = "POST") -> Client:
    headers = {"content-length": str(length)} if length is not None else {"transfer-encoding": "chunked"}
    client = Client(chunks)
    scope = http_scope(path, method=method, headers=headers)
    asyncio.run(asyncio.wait_for(application(scope, client.receive, client.send), 30))
    return client


def echo_app():
    """An application that reads the whole body and answers with its size."""
    read = []

    async def app(scope, receive, send):
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                read.append(("gone", size))
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        read.append(("read", size))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})

    return app, read


@pytest.mark.parametrize("path", PATHS)
def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read(path):
    from aditus.asgi import application

    limit = settings.MAX_REQUEST_BODY_BYTES
    client = run(application, path, [b"x" * 1024] * 4, length=300 * 1024 * 1024)

    assert client.status == 413 and client.taken == 0
    body = client.json()
    assert body["error"] == {"type": "input_too_large", "message": body["detail"], "limit": limit}
    assert f"{limit} bytes (MAX_REQUEST_BODY_BYTES)" in body["detail"]
    assert (b"connection", b"close") in client.sent[0]["headers"]


def test_a_body_streamed_without_a_length_is_cut_off_at_the_limit():
    app, read = echo_app()
    guarded = BodyLimit(app, default=Limit(10_000, "MAX_REQUEST_BODY_BYTES"))

    client = run(guarded, "/anything", [b"x" * 4000] * 10)

    assert client.status == 413 and client.json()["error"]["limit"] == 10_000
    assert client.taken == 3  # the third chunk passed the limit; the other seven were never read
    assert read == [("gone", 8000)]  # the application never saw the chunk past the limit, nor answered
    assert len(client.sent) == 2


@pytest.mark.parametrize(("chunks", "length"), [([b"x" * 4000] * 2, None), ([b"x" * 10_000], 10_000), ([], None)])
def test_a_body_within_the_limit_reaches_the_application_whole(chunks, length):
    app, read = echo_app()
    guarded = BodyLimit(app, default=Limit(10_000, "MAX_REQUEST_BODY_BYTES"))

    client = run(guarded, "/anything", chunks or [b""], length=length)

    assert client.status == 200 and read == [("read", sum(map(len, chunks)))]


@pytest.mark.django_db(transaction=True)
def test_the_image_upload_may_be_as_large_as_the_image_limit_and_its_form():
    from aditus.asgi import application

    allowed = settings.TASK_MAX_IMAGE_BYTES + settings.MULTIPART_OVERHEAD_BYTES
    assert allowed > settings.MAX_REQUEST_BODY_BYTES

    over = run(application, IMAGE_URL, [b""], length=allowed + 1)
    assert over.status == 413 and over.json()["error"]["limit"] == allowed
    assert "TASK_MAX_IMAGE_BYTES" in over.json()["detail"]
    # Within it, the request goes on to the endpoint, which wants a signed-in caller first.
    within = run(application, IMAGE_URL, [b"x" * 1024], length=settings.MAX_REQUEST_BODY_BYTES + 1)
    assert within.status == 401


@pytest.mark.django_db(transaction=True)
def test_an_anonymous_oversized_body_gets_a_413_not_a_401_after_reading_it():
    from aditus.asgi import application

    client = run(application, TOKEN_URL, [b"{" * 65536] * 100, length=100 * 65536)

    assert client.status == 413 and client.taken == 0


def test_other_scopes_pass_through_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodyLimit(app, default=Limit(1, "X"))({"type": "lifespan"}, None, None))

    assert seen == ["lifespan"]
