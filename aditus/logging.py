"""Request ids and structured logs.

`RequestIdMiddleware` (aditus.middleware) gives every request an id and keeps it in a context variable, which is
per asyncio task under ASGI and per thread under WSGI. `RequestIdFilter` copies it onto every log record and
`JsonFormatter` writes one JSON object per line (`LOG_FORMAT=json`).
"""

import json
import logging
import re
import uuid
from contextvars import ContextVar, Token
from datetime import UTC, datetime

REQUEST_ID_HEADER = "X-Request-ID"

# What a caller may send as its own id. The same rule as the task endpoints and the 64 characters of
# `usage.UsageRecord.request_id`, so an id accepted here can be stored there. Anything else is replaced, so a log
# line never carries a caller's spaces, quotes or control characters.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

_request_id: ContextVar[str | None] = ContextVar("aditus_request_id", default=None)


def current_request_id() -> str | None:
    """Return the id of the request being handled, or None outside a request."""
    return _request_id.get()


def request_id_bind(request_id: str) -> Token:
    """Make `request_id` current (for the running task or thread); return the token that undoes it."""
    return _request_id.set(request_id)


def request_id_unbind(token: Token) -> None:
    """Restore the request id that was current before `request_id_bind` returned `token`."""
    _request_id.reset(token)


def request_id_from_header(value: str | None) -> str:
    """Return `value` if it is a sane request id, else a new one (32 hex digits)."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Add `request_id` to every record ("-" outside a request); never drop one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and exc_info/stack_info when present."""

    def format(self, record: logging.LogRecord) -> str:
        # RequestIdFilter sets the attribute where the record was made; without the filter, read the context here.
        request_id = getattr(record, "request_id", None) or _request_id.get()
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id == "-" else request_id,
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a message argument that JSON cannot encode must not lose the whole line.
        return json.dumps(entry, ensure_ascii=False, default=str)
