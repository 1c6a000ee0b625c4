"""The JSON the task endpoints answer with, and the error every refusal is raised as.

Built with plain `json.dumps` on purpose: this is on every request's path, and a serializer per response would
cost more than the rest of the gateway's own work.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.http import HttpResponse

from providers.clients.base import TokenUsage

JSON = "application/json"


class TaskError(Exception):
    """A request the gateway answers with an error: HTTP status, a stable `type` and a message for people.

    `extra` goes into the error object (e.g. `field`, `limit`); `headers` onto the response.
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, **self.extra}


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(payload: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(dumps(payload), status=status, content_type=JSON)
    if headers:
        for name, value in headers.items():
            response[name] = value
    return response


def usage_dict(usage: TokenUsage | None) -> dict[str, int]:
    usage = usage or TokenUsage()
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def cost_text(cost: Decimal | None) -> str | None:
    # Fixed-point without trailing zeros: str() would give "1.2E-7" for a very cheap call.
    return None if cost is None else format(cost.normalize(), "f")
