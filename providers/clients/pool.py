"""Shared HTTP connection pools for the provider SDKs.

Each provider client owns one `HttpPool`: one `httpx2.Client` per base URL for the whole process, and
`httpx2.AsyncClient`s per (running event loop, base URL): one, and more only while many calls are in flight
(see ASYNC_SHARDS). An async client's connections belong to the loop
that opened them, and `async_to_sync` runs each call on a loop of its own, so async clients are never shared
across loops; an entry goes away with its loop. No pooled client carries an API key: the SDKs add it to each
request, from an SDK client built for that one call.
"""

from __future__ import annotations

import asyncio
import functools
import http.cookiejar
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import httpx2

from .base import require_key

# The SDKs' own defaults: the gateway keeps many slow calls in flight at once.
LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30.0)
# Async clients per (loop, base URL). httpcore's pool looks at every connection it holds each time a request
# starts and each time one ends (is it idle, expired, readable?), so with hundreds of slow calls in flight on one
# client those scans cost several milliseconds of CPU per call (measured: 256 calls awaiting a 1 s provider). So a
# call goes to the first client with fewer than ASYNC_SHARD_CALLS calls in flight (the least busy when all are
# full), up to ASYNC_SHARDS clients: a light load stays on the first client and its keep-alive connections.
ASYNC_SHARDS = 32
ASYNC_SHARD_CALLS = 16
# Each of those keeps at most this many idle connections, so its scans stay short too.
ASYNC_SHARD_LIMITS = httpx2.Limits(
    max_connections=1000, max_keepalive_connections=ASYNC_SHARD_CALLS, keepalive_expiry=30.0
)


class _CountingTransport(httpx2.AsyncBaseTransport):
    """httpx2's transport, counting the calls in flight (until their response is closed)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport):
        self.inner = inner
        self.in_flight = 0

    @property
    def _pool(self) -> Any:  # httpcore's pool, for tests that look at the connections
        return self.inner._pool

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.in_flight += 1
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            self.in_flight -= 1
            raise
        response.stream = _CountedStream(response.stream, self)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountedStream(httpx2.AsyncByteStream):
    def __init__(self, stream: Any, transport: _CountingTransport):
        self.stream = stream
        self.transport: _CountingTransport | None = transport

    async def __aiter__(self):
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.in_flight -= 1
        await self.stream.aclose()


@functools.cache
def ssl_context() -> Any:
    """One SSL context for every pooled client (loading the CA bundle takes ~20 ms; a client then ~60 µs)."""
    return httpx2.create_ssl_context()


def _cookie_jar() -> http.cookiejar.CookieJar:
    # Pooled clients serve every config's key: provider cookies must not ride along from one call to another.
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


EventHooks = Mapping[str, list[Callable[..., Any]]]


class HttpPool:
    """Pooled httpx2 clients for one provider, keyed by base URL (and, for async, by event loop)."""

    def __init__(self, *, event_hooks: EventHooks | None = None, async_event_hooks: EventHooks | None = None):
        self._event_hooks = dict(event_hooks or {})
        self._async_event_hooks = dict(async_event_hooks or {})
        self._lock = threading.Lock()
        self._clients: dict[str, httpx2.Client] = {}
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, list[httpx2.AsyncClient]]
        ] = weakref.WeakKeyDictionary()

    def _options(self) -> dict[str, Any]:
        # No redirects: httpx drops `Authorization` on a cross-origin redirect, but not `x-api-key` or
        # `x-goog-api-key`, and the provider APIs do not redirect.
        return {
            "verify": ssl_context(),
            "limits": LIMITS,
            "follow_redirects": False,
            "cookies": _cookie_jar(),
        }

    def client(self, base_url: str) -> httpx2.Client:
        client = self._clients.get(base_url)
        if client is None or client.is_closed:
            with self._lock:
                client = self._clients.get(base_url)
                if client is None or client.is_closed:
                    client = httpx2.Client(event_hooks=self._event_hooks, **self._options())
                    self._clients[base_url] = client
        return client

    def async_client(self, base_url: str) -> httpx2.AsyncClient:
        """A client of the running loop for `base_url` (see ASYNC_SHARDS); call it from inside that loop."""
        loop = asyncio.get_running_loop()
        clients = self._async_clients.get(loop)
        shards = clients.get(base_url) if clients is not None else None
        if shards:
            least = None
            for client in shards:
                calls = client._transport.in_flight
                if calls < ASYNC_SHARD_CALLS and not client.is_closed:
                    return client
                if least is None or calls < least._transport.in_flight:
                    least = client
            if len(shards) >= ASYNC_SHARDS and not least.is_closed:
                return least
        with self._lock:
            for other in [other for other in self._async_clients if other.is_closed()]:
                # Nothing can close these connections any more; dropping them lets their sockets go.
                del self._async_clients[other]
            shards = self._async_clients.setdefault(loop, {}).setdefault(base_url, [])
            shards[:] = [client for client in shards if not client.is_closed]
            client = self._new_async_client()
            shards.append(client)
        return client

    def async_clients(self, base_url: str) -> list[httpx2.AsyncClient]:
        """Every client of the running loop for `base_url` (for tests)."""
        clients = self._async_clients.get(asyncio.get_running_loop()) or {}
        return list(clients.get(base_url, []))

    def _new_async_client(self) -> httpx2.AsyncClient:
        client = httpx2.AsyncClient(
            event_hooks=self._async_event_hooks, **{**self._options(), "limits": ASYNC_SHARD_LIMITS}
        )
        # The client's own transport (as configured above), counted; proxies from the environment, if any, keep
        # theirs (uncounted: such calls always go to the first client).
        client._transport = _CountingTransport(client._transport)
        return client

    def close(self) -> None:
        """Close the sync clients (async ones close with their loop). For tests and shutdown."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()


class PooledSdkClient:
    """Build an SDK client per call on this provider's shared connection pool.

    For the OpenAI and Anthropic SDKs, which take the same constructor arguments. The SDK object is cheap (tens
    of microseconds) and holds the key only for the call; the connections live in the pool.
    """

    name: str
    default_base_url: str
    sdk_class: type
    async_sdk_class: type

    def __init__(self, pool: HttpPool | None = None):
        self.pool = pool or HttpPool()

    def _options(self, endpoint, api_key: str) -> dict[str, Any]:
        require_key(self.name, api_key)
        return {
            "api_key": api_key,
            "base_url": endpoint.base_url or self.default_base_url,
            "timeout": endpoint.timeout,
            "max_retries": 0,
            "default_headers": dict(endpoint.extra_headers) or None,
        }

    def _sdk(self, endpoint, api_key: str):
        options = self._options(endpoint, api_key)
        return self.sdk_class(http_client=self.pool.client(options["base_url"]), **options)

    def _async_sdk(self, endpoint, api_key: str):
        options = self._options(endpoint, api_key)
        return self.async_sdk_class(http_client=self.pool.async_client(options["base_url"]), **options)
