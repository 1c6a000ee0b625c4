"""A tiny OpenAI-compatible server for the two behaviours the project's fake providers do not have: structured
output that does not match the schema, and a stream that stalls after its first delta.

The model in the request picks the behaviour:
    stub-invalid          answers JSON that fails the requested schema ({"title": 5})
    stub-invalid-once     the first call for a given schema name answers invalid JSON, later calls a valid instance
    stub-stall            streams one delta ("Hello"), then stalls for STALL_SECONDS before the rest
    anything else         a valid instance of the requested schema, or "Plain stub reply." without one
Every answer reports STUB_USAGE.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from providers.fake.schema_instance import instance_from_schema

STALL_SECONDS = 5.0
STUB_USAGE = {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}


class _Handler(BaseHTTPRequestHandler):
    server: StubServer

    def log_message(self, format, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        self.server.requests.append(model)
        if body.get("stream"):
            return self._stream(model)
        schema = (body.get("response_format") or {}).get("json_schema")
        if schema is None:
            content = "Plain stub reply."
        elif model == "stub-invalid" or (model == "stub-invalid-once" and self.server.first_time(schema["name"])):
            content = json.dumps({"title": 5})
        else:
            content = json.dumps(instance_from_schema(schema["schema"]))
        answer = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": STUB_USAGE,
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, model: str):
        def chunk(delta: dict, usage: dict | None = None) -> bytes:
            choices = [{"index": 0, "delta": delta, "finish_reason": None}] if delta else []
            event = {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": choices,
                "usage": usage,
            }
            return b"data: " + json.dumps(event).encode() + b"\n\n"

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            self.wfile.write(chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hello"}))
            self.wfile.flush()
            deadline = time.monotonic() + STALL_SECONDS
            while time.monotonic() < deadline and not self.server.stopping.is_set():
                time.sleep(0.02)
            self.wfile.write(chunk({"content": " world"}) + chunk({}, STUB_USAGE) + b"data: [DONE]\n\n")
        except OSError:
            pass  # the client went away


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[str] = []
        self.stopping = threading.Event()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def first_time(self, name: str) -> bool:
        with self._lock:
            first = name not in self._seen
            self._seen.add(name)
            return first

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self.requests.clear()

    def __enter__(self) -> StubServer:
        threading.Thread(target=self.serve_forever, name="stub-openai", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
