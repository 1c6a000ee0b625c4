"""Keys and behaviour directives: make a fake provider refuse a key, slow down, fail, or report cached tokens.

Keys are judged like the real services judge them:
    valid        OpenAI: starts with `sk-`; Anthropic: `sk-ant-`; Gemini: `AIza`; and contains neither
                 `invalid` nor `revoked` (any case)     -> otherwise the provider's authentication error
    `noperm`     anywhere in a valid key                -> the provider's 403 permission error
    missing key                                         -> the provider's missing-key error

Directives ride inside the key after `~` (`sk-demo~fail=429~latency=250`) or in request headers; a header
wins:
    latency=<ms>   X-Fake-Latency-Ms: <ms>     wait before answering (asyncio.sleep: other requests go on)
    fail=<what>    X-Fake-Fail: <what>         429 | 500 | 503 | 529 | timeout | malformed | midstream
                                               (anything else, e.g. `none`, means no failure: a header
                                               can switch off a failure the key asks for)
    cached=<n>     X-Fake-Cached-Tokens: <n>   report n cached input tokens (capped at the input tokens)

`fail` in detail (each in the provider's real body shape; see the provider modules):
    429        rate-limit error with a `retry-after: 1` header
    500        internal server error
    503        unavailable / overloaded (Anthropic: 503 api_error)
    529        Anthropic: 529 overloaded_error; OpenAI and Gemini have no 529 and answer their 503
    timeout    never answer: hold the request for HOLD_SECONDS or until the client goes away
    malformed  status 200 whose body is not valid JSON (streams: one event whose data is not valid JSON)
    midstream  streams: send some deltas, then drop the connection; non-streams: send half the body, then drop
Latency is applied first, then the key check, then `fail`, then the request itself is judged.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass

HOLD_SECONDS = 600.0

FAILURES = frozenset({"429", "500", "503", "529", "timeout", "malformed", "midstream"})


class KeyCheck(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"
    NO_PERMISSION = "noperm"


def check_key(key: str | None, prefix: str) -> KeyCheck:
    """Judge `key` for a provider whose real keys start with `prefix`."""
    if not key:
        return KeyCheck.MISSING
    lowered = key.lower()
    if not key.startswith(prefix) or "invalid" in lowered or "revoked" in lowered:
        return KeyCheck.INVALID
    if "noperm" in lowered:
        return KeyCheck.NO_PERMISSION
    return KeyCheck.OK


@dataclass(frozen=True, slots=True)
class Directives:
    latency_ms: int = 0
    fail: str | None = None
    cached: int = 0

    @classmethod
    def parse(cls, key: str | None, headers: Mapping[str, str]) -> Directives:
        """Read the directives from the key's `~name=value` parts, then let request headers override them."""
        values: dict[str, str] = {}
        if key and "~" in key:
            for part in key.split("~")[1:]:
                name, _, value = part.partition("=")
                values[name.strip().lower()] = value.strip()
        for header, name in (
            ("X-Fake-Latency-Ms", "latency"),
            ("X-Fake-Fail", "fail"),
            ("X-Fake-Cached-Tokens", "cached"),
        ):
            value = headers.get(header)
            if value is not None:
                values[name] = value.strip()
        if not values:
            return _NONE
        fail = values.get("fail", "").lower() or None
        return cls(
            latency_ms=_non_negative(values.get("latency")),
            fail=fail if fail in FAILURES else None,
            cached=_non_negative(values.get("cached")),
        )

    async def wait(self) -> None:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)


_NONE = Directives()


def _non_negative(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


async def hold_open() -> None:
    """Sleep for the `timeout` failure; the server cancels the sleep when the client disconnects."""
    await asyncio.sleep(HOLD_SECONDS)
