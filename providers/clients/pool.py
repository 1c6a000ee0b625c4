"""Shared HTTP connection pools for the provider SDKs.

Each provider client owns one `HttpPool`: one `httpx2.Client` per base URL for the whole process, and one
`httpx2.AsyncClient` per (running event loop, base URL). An async client's connections belong to the loop
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

# The SDKs' own defaults: the gateway keeps many slow calls in flight at once.
LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30.0)


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
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, httpx2.AsyncClient]] = (
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
                    client = httpx2.Client(event_hooks=self._event_hooks, **self._options())
                    self._clients[base_url] = client
        return client

    def async_client(self, base_url: str) -> httpx2.AsyncClient:
        """The running loop's client for `base_url`; call it from inside that loop."""
        loop = asyncio.get_running_loop()
        clients = self._async_clients.get(loop)
        client = clients.get(base_url) if clients is not None else None
        if client is None or client.is_closed:
            with self._lock:
                for other in [other for other in self._async_clients if other.is_closed()]:
                    # Nothing can close these connections any more; dropping them lets their sockets go.
                    del self._async_clients[other]
                clients = self._async_clients.setdefault(loop, {})
                client = clients.get(base_url)
                if client is None or client.is_closed:
                    client = httpx2.AsyncClient(event_hooks=self._async_event_hooks, **self._options())
                    clients[base_url] = client
        return client

    def close(self) -> None:
        """Close the sync clients (async ones close with their loop). For tests and shutdown."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()
