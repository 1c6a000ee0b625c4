"""Keys and behaviour directives: make a fake provider refuse a key, slow down, fail, report cached tokens, answer
structured output that fails its schema, or stall a stream.

Keys are judged like the real services judge them, on the part before any `~` (the directives below are not
part of what is judged, so `sk-demo~output=invalid` is a valid key):
    valid        OpenAI: starts with `sk-`; Anthropic: `sk-ant-`; Gemini: `AIza`; and contains neither
                 `invalid` nor `revoked` (any case)     -> otherwise the provider's authentication error
    `noperm`     anywhere in a valid key                -> the provider's 403 permission error
    missing key                                         -> the provider's missing-key error

Directives ride inside the key after `~` (`sk-demo~fail=429~latency=250`) or in request headers; a header
wins:
    latency=<ms>   X-Fake-Latency-Ms: <ms>     wait before answering (asyncio.sleep: other requests go on)
    fail=<what>    X-Fake-Fail: <what>         400 | 429 | 500 | 503 | 529 | timeout | malformed | midstream
                                               (anything else, e.g. `none`, means no failure: a header
                                               can switch off a failure the key asks for)
    cached=<n>     X-Fake-Cached-Tokens: <n>   report n cached input tokens (capped at the input tokens)
    output=<what>  X-Fake-Output: <what>       invalid | invalid-once: structured output that fails its schema
                                               (anything else, e.g. `valid`, means a valid instance)
    stall=<ms>     X-Fake-Stall-Ms: <ms>       streams: send the first delta, then wait ms before the rest
    chunks=<n>     X-Fake-Chunks: <n>          streams: split the text into n deltas (default: words, at most 12)

`fail` in detail (each in the provider's real body shape; see the provider modules):
    400        the provider's invalid-request error, a context-length refusal: OpenAI 400 invalid_request_error
               (code context_length_exceeded), Anthropic 400 invalid_request_error, Gemini 400 INVALID_ARGUMENT
    429        rate-limit error with a `retry-after: 1` header
    500        internal server error
    503        unavailable / overloaded (Anthropic: 503 api_error)
    529        Anthropic: 529 overloaded_error; OpenAI and Gemini have no 529 and answer their 503
    timeout    never answer: hold the request for HOLD_SECONDS or until the client goes away
    malformed  status 200 whose body is not valid JSON (streams: one event whose data is not valid JSON)
    midstream  streams: send some deltas, then drop the connection; non-streams: send half the body, then drop
Latency is applied first, then the key check, then `fail`, then the request itself is judged.

`output` applies to requests that ask for output with a schema (OpenAI response_format json_schema, Anthropic
output_config / output_format or a forced tool's input_schema, Gemini responseJsonSchema / responseSchema); the
answer is valid JSON that fails the schema (see `schema_instance.invalid_instance_from_schema`): the required
properties hold values of the wrong type. Requests without a schema answer as usual.
    invalid       every such answer fails its schema
    invalid-once  the first request for a given (key, schema) fails it, later ones get a valid instance; each
                  provider remembers the last ONCE_MEMORY (key, schema) pairs it saw (as digests), forgetting the
                  oldest first
`stall` applies to streams only (plain answers ignore it; `latency` delays those): the stream opens, sends its
first text delta (OpenAI: after the role chunk; Anthropic: after message_start, content_block_start and ping;
Gemini: the first chunk), waits, then sends the rest. The wait ends early when the client goes away.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

HOLD_SECONDS = 600.0
ONCE_MEMORY = 4096

FAILURES = frozenset({"400", "429", "500", "503", "529", "timeout", "malformed", "midstream"})
OUTPUTS = frozenset({"invalid", "invalid-once"})


class KeyCheck(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"
    NO_PERMISSION = "noperm"


def check_key(key: str | None, prefix: str) -> KeyCheck:
    """Judge `key` for a provider whose real keys start with `prefix`."""
    if not key:
        return KeyCheck.MISSING
    key = key.partition("~")[0]
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
    output: str | None = None
    stall_ms: int = 0
    chunks: int = 0  # streams: at most this many text deltas (0: the default, generation.MAX_STREAM_DELTAS)

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
            ("X-Fake-Output", "output"),
            ("X-Fake-Stall-Ms", "stall"),
            ("X-Fake-Chunks", "chunks"),
        ):
            value = headers.get(header)
            if value is not None:
                values[name] = value.strip()
        if not values:
            return _NONE
        fail = values.get("fail", "").lower() or None
        output = values.get("output", "").lower() or None
        return cls(
            latency_ms=_non_negative(values.get("latency")),
            fail=fail if fail in FAILURES else None,
            cached=_non_negative(values.get("cached")),
            output=output if output in OUTPUTS else None,
            stall_ms=_non_negative(values.get("stall")),
            chunks=_non_negative(values.get("chunks")),
        )

    async def wait(self) -> None:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)

    async def stall(self) -> None:
        """The `stall` pause of a stream, after its first delta."""
        if self.stall_ms:
            await asyncio.sleep(self.stall_ms / 1000)

    def invalid_output(self, seen: SeenOnce, key: str | None, schema: Any) -> bool:
        """Whether the structured output for `schema` should fail it (`output=invalid`, or `invalid-once` the
        first time this key asks for this schema)."""
        if self.output == "invalid":
            return True
        return self.output == "invalid-once" and seen.first_time(key, schema)


_NONE = Directives()


class SeenOnce:
    """The (key, schema) pairs an `output=invalid-once` request has asked for, as 16-byte digests; at most
    `limit` of them, the oldest forgotten first. One per provider app; used from its event loop only."""

    def __init__(self, limit: int = ONCE_MEMORY):
        self.limit = limit
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def first_time(self, key: str | None, schema: Any) -> bool:
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        digest = hashlib.blake2b(f"{key or ''}\0{canonical}".encode(), digest_size=16).digest()
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return False
        self._seen[digest] = None
        if len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)


# Each provider app keeps its own SeenOnce under this key (request.config_dict[SEEN_ONCE]).
SEEN_ONCE = web.AppKey("seen_once", SeenOnce)


def _non_negative(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


async def hold_open() -> None:
    """Sleep for the `timeout` failure; the server cancels the sleep when the client disconnects."""
    await asyncio.sleep(HOLD_SECONDS)


def stream_pieces_for(text: str, directives: Directives) -> list[str]:
    """A stream's text deltas: exactly `chunks` of them when the directive asks, else word-sized ones."""
    from providers.fake.generation import stream_pieces

    if directives.chunks:
        return stream_pieces(text, directives.chunks, exact=True)
    return stream_pieces(text)
