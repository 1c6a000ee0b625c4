"""Shared HTTP connection pools for the provider SDKs.

Each provider client owns one `HttpPool`: one `httpx2.Client` per base URL for the whole process (for the sync
credential checks), and one `httpx2.AsyncClient` per (running event loop, base URL) for the calls that generate.
An async client's connections belong to the loop that opened them, and `async_to_sync` runs each call on a loop of
its own, so async clients are never shared across loops; they are closed when their loop shuts down
(`runtime.aio.when_loop_closes`).

The async clients use the aiohttp transport the OpenAI and Anthropic SDKs ship for this
(`DefaultAioHttpClient`): the SDKs still build and send every request through httpx2's interface, and aiohttp
moves the bytes. httpcore's async pool, the default, looks at every connection it holds each time a request
starts and ends, and its HTTP/1.1 machine is pure Python: together about 0.3 ms of CPU per call here, a tenth of
the gateway's budget, and more with many calls in flight. aiohttp's pool takes a connection off a queue, and
its HTTP parser is C.

No pooled client carries an API key or keeps cookies: a pool serves every config's key.
"""

from __future__ import annotations

import asyncio
import functools
import http.cookiejar
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import httpx2

from runtime.aio import when_loop_closes

from .base import require_key

# The SDKs' own defaults: the gateway keeps many slow calls in flight at once.
LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30.0)


@functools.cache
def ssl_context() -> Any:
    """One SSL context for every pooled client (loading the CA bundle takes ~20 ms; a client then ~60 µs)."""
    return httpx2.create_ssl_context()


def _cookie_jar() -> http.cookiejar.CookieJar:
    # Pooled clients serve every config's key: provider cookies must not ride along from one call to another.
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def _transport_error(exc: BaseException) -> type[httpx2.TransportError] | None:
    """The httpx2 error for an aiohttp one, as httpx2's own transport would raise it."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx2.ConnectTimeout
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx2.ReadTimeout
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx2.ConnectError
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx2.RemoteProtocolError
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        return httpx2.ReadError
    return None


@functools.cache
def aiohttp_classes() -> tuple[type[httpx2.AsyncClient], type]:
    """The httpx2 client on aiohttp and our subclass of its transport.

    The one place aditus reaches into an SDK's private module: the OpenAI SDK ships the client and the
    transport in `openai._vendor.httpx_aiohttp` (the client's public face, `openai.DefaultAioHttpClient`, takes
    no transport, and the transport has no public name). `tests/providers/test_pool.py` fails loudly if an
    upgrade moves or changes them.
    """
    from openai._vendor.httpx_aiohttp import Httpx2AiohttpClient
    from openai._vendor.httpx_aiohttp.transport import AiohttpTransport

    class Transport(AiohttpTransport):
        """The SDKs' aiohttp transport, raising the httpx2 errors httpx2's own transport would.

        Its own table maps every `ClientConnectionError`, a refused connection included, to `ConnectTimeout`,
        so an unreachable provider would be reported as one that timed out.
        """

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            try:
                return await super().handle_async_request(request)
            except httpx2.TransportError as exc:
                error_class = _transport_error(exc.__cause__)
                if error_class is None or isinstance(exc, error_class):
                    raise
                raise error_class(str(exc), request=request) from exc.__cause__

    return Httpx2AiohttpClient, Transport


def _aiohttp_session() -> aiohttp.ClientSession:
    """The aiohttp session under an async client: made on its first request, inside the running loop."""
    connector = aiohttp.TCPConnector(
        limit=LIMITS.max_connections, keepalive_timeout=LIMITS.keepalive_expiry, ssl=ssl_context()
    )
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


class _LoopClients:
    """The async clients of one event loop, by base URL, closed with the loop; and what was built on them
    (`HttpPool.async_shared`)."""

    __slots__ = ("by_url", "shared", "closing", "closer")

    def __init__(self) -> None:
        self.by_url: dict[str, httpx2.AsyncClient] = {}
        self.shared: dict[tuple, tuple[httpx2.AsyncClient, Any]] = {}
        self.closing: list[httpx2.AsyncClient] = []
        # An aiohttp session left open would warn when collected, and hold its sockets until then.
        self.closer = when_loop_closes(self._close)  # kept here: the loop holds it weakly

    async def _close(self) -> None:
        for client in self.closing:
            await client.aclose()


EventHooks = Mapping[str, list[Callable[..., Any]]]


class HttpPool:
    """Pooled httpx2 clients for one provider, keyed by base URL (and, for async, by event loop)."""

    def __init__(self, *, async_event_hooks: EventHooks | None = None):
        self._async_event_hooks = dict(async_event_hooks or {})
        self._lock = threading.Lock()
        self._clients: dict[str, httpx2.Client] = {}
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
            weakref.WeakKeyDictionary()
        )

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
                    client = httpx2.Client(**self._options())
                    self._clients[base_url] = client
        return client

    def async_client(self, base_url: str) -> httpx2.AsyncClient:
        """The running loop's client for `base_url`; call it from inside that loop."""
        loop = asyncio.get_running_loop()
        clients = self._async_clients.get(loop)
        client = clients.by_url.get(base_url) if clients is not None else None
        if client is not None and not client.is_closed:
            return client
        with self._lock:
            for other in [other for other in self._async_clients if other.is_closed()]:
                # Closed with their loop already (or never used again): dropping them lets the loop go.
                del self._async_clients[other]
            clients = self._async_clients.get(loop)
            if clients is None:
                clients = self._async_clients[loop] = _LoopClients()
            client = clients.by_url[base_url] = self._new_async_client()
            clients.closing.append(client)
        return client

    def async_shared(self, base_url: str, key: tuple, build: Callable[[httpx2.AsyncClient], Any]) -> Any:
        """An object built on the running loop's client for `base_url` (`build(client)`: an SDK object), kept by
        (base URL, `key`) as long as that client serves; call it from inside the loop."""
        client = self.async_client(base_url)
        clients = self._async_clients.get(asyncio.get_running_loop())
        if clients is None:  # a pool that keeps no clients (a test double) keeps nothing built on them either
            return build(client)
        found = clients.shared.get((base_url, key))
        if found is None or found[0] is not client:
            if len(clients.shared) >= 256:  # configs come and go; keep it bounded
                clients.shared.clear()
            found = clients.shared[(base_url, key)] = (client, build(client))
        return found[1]

    def _new_async_client(self) -> httpx2.AsyncClient:
        client_class, transport_class = aiohttp_classes()
        return client_class(
            transport=transport_class(client=_aiohttp_session),
            event_hooks=self._async_event_hooks,
            **self._options(),
        )

    def close(self) -> None:
        """Close the sync clients (async ones close with their loop). For tests and shutdown."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()


class PooledSdkClient:
    """SDK clients on this provider's shared connection pool, for the OpenAI and Anthropic SDKs (which take the
    same constructor arguments).

    The sync credential check builds an SDK object per call, holding the key for that call only. Async calls,
    the gateway's hot path, share one SDK object per (event loop, base URL, timeout, extra headers), built
    without the key; each call sends its key in its own request headers (`key_headers`), so the plaintext still
    lives only as long as the call. Building an SDK object costs about 0.1 ms of CPU, and a fresh async one spends
    a trip to a thread on its first request (to read the platform for its telemetry headers): together a twentieth
    of the gateway's budget per call.
    """

    name: str
    default_base_url: str
    sdk_class: type
    async_sdk_class: type
    # Stands in for the key in shared SDK objects, which require one; every request replaces it (key_headers).
    KEY_PLACEHOLDER = "per-call-key"

    def __init__(self, pool: HttpPool | None = None):
        self.pool = pool or HttpPool()

    @staticmethod
    def key_headers(api_key: str) -> dict[str, str]:
        """The request headers that carry `api_key`: the one the SDK itself sends for its `api_key`."""
        return {"Authorization": f"Bearer {api_key}"}

    def _options(self, endpoint, api_key: str) -> dict[str, Any]:
        return {
            "api_key": api_key,
            "base_url": endpoint.base_url or self.default_base_url,
            "timeout": endpoint.timeout,
            "max_retries": 0,
            "default_headers": dict(endpoint.extra_headers) or None,
        }

    def _sdk(self, endpoint, api_key: str):
        require_key(self.name, api_key)
        options = self._options(endpoint, api_key)
        return self.sdk_class(http_client=self.pool.client(options["base_url"]), **options)

    def _async_sdk(self, endpoint, api_key: str) -> tuple[Any, dict[str, str]]:
        """The shared async SDK object for `endpoint`, and the headers to send `api_key` with on each call."""
        require_key(self.name, api_key)
        base_url = endpoint.base_url or self.default_base_url
        sdk = self.pool.async_shared(
            base_url,
            (endpoint.timeout, tuple(sorted(dict(endpoint.extra_headers).items()))),
            lambda client: self.async_sdk_class(http_client=client, **self._options(endpoint, self.KEY_PLACEHOLDER)),
        )
        return sdk, self.key_headers(api_key)
