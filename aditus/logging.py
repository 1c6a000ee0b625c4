"""Request ids, structured logs, and no secrets in them.

`RequestIdMiddleware` (aditus.middleware) gives every request an id and keeps it in a context variable, which is
per asyncio task under ASGI and per thread under WSGI. `RequestIdFilter` copies it onto every log record and
`JsonFormatter` writes one JSON object per line (`LOG_FORMAT=json`). `SecretRedactionFilter` takes keys, tokens and
the settings' secrets out of every record before it is written.
"""

import json
import logging
import re
import traceback
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
        if record.exc_text:  # set by SecretRedactionFilter (redacted), or by an earlier formatter
            entry["exc_info"] = record.exc_text
        elif record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a message argument that JSON cannot encode must not lose the whole line.
        return json.dumps(entry, ensure_ascii=False, default=str)


REDACTED = "[redacted]"
# What a secret looks like where a library may log it (the SDKs' and httpx's debug lines print request options and
# headers, as dicts or as text).
_SECRET_SHAPES = re.compile(
    r"""
    (?P<header>                                   # a credential header or parameter, and its separator
        \b(?:proxy-)?authorization | \bx-api-key | \bx-goog-api-key | \bapi[-_]key | (?<=[?&])key
    )
    (?P<separator>['"]?\s*[:=]\s*(?:b?['"])?)
    (?P<scheme>(?:bearer|basic|token)\s+)?
    [^\s'",;&})\]]+                               # the value, up to where a dict, list or query string goes on
    | (?P<bearer>\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}  # a bearer token anywhere else
    | \bsk-ant-[A-Za-z0-9_-]{6,}                  # Anthropic keys
    | \bsk-[A-Za-z0-9_-]{6,}                      # OpenAI keys (sk-proj-..., sk-svcacct-...)
    | \bAIza[0-9A-Za-z_-]{6,}                     # Google API keys
    """,
    re.IGNORECASE | re.VERBOSE,
)


def _redact_shape(match: re.Match[str]) -> str:
    if match.group("header"):
        return f"{match.group('header')}{match.group('separator')}{match.group('scheme') or ''}{REDACTED}"
    if match.group("bearer"):
        return f"{match.group('bearer')}{REDACTED}"
    return REDACTED


def redact_secrets(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without the `secrets` named exactly and without anything shaped like a key or a credential header."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _SECRET_SHAPES.sub(_redact_shape, text)


def configured_secrets() -> tuple[str, ...] | None:
    """The secrets of the settings: SECRET_KEY, the FIELD_ENCRYPTION_KEYS, METRICS_TOKEN, the SMTP password and the
    alert webhook URL (it carries its token); longest first, so that no part of one is left behind. None while the
    settings are not loaded yet (uvicorn logs before it imports the application)."""
    from django.conf import settings

    if not settings.configured:
        return None
    found = [
        getattr(settings, "SECRET_KEY", None),
        *getattr(settings, "FIELD_ENCRYPTION_KEYS", ()),
        getattr(settings, "METRICS_TOKEN", None),
        getattr(settings, "EMAIL_HOST_PASSWORD", None),
        getattr(settings, "ALERT_WEBHOOK_URL", None),
    ]
    return tuple(sorted({value for value in found if value and len(value) >= 8}, key=len, reverse=True))


class SecretRedactionFilter(logging.Filter):
    """Redact API keys, bearer tokens, credential headers and the settings' secrets from every record: its message
    (formatted with its arguments), its traceback and its stack. Never drops a record.

    On the root logger's handlers (settings.LOGGING), so that it sees what every library logs: the SDKs, httpx,
    Django, and uvicorn (whose loggers settings.LOGGING sends to the same handler). The record is changed in place,
    so handlers after this one see it redacted too. The settings' secrets are read once they are loaded.
    """

    def __init__(self, name: str = ""):
        super().__init__(name)
        self._secrets: tuple[str, ...] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets is None:
            self._secrets = configured_secrets()
        secrets = self._secrets or ()
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not format: redact the bare message, drop the arguments
            message = str(record.msg)
        redacted = redact_secrets(message, secrets)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[0] is not None:
            # Formatted here and redacted: formatters use exc_text when it is set. exc_info stays, for handlers
            # that want the exception itself.
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact_secrets(text, secrets)
        elif record.exc_text:
            record.exc_text = redact_secrets(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info, secrets)
        return True
