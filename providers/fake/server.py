"""Run the fake providers in the foreground (`manage.py fake_providers`) or in a thread for tests."""

from __future__ import annotations

import asyncio
import ipaddress
import threading

from aiohttp import web

from .app import build_app

# Enough for `wrk -c 256` and more without refused connections.
BACKLOG = 2048
# Handlers are cancelled when their client goes away (the `timeout` failure relies on it): quick shutdown.
RUNNER_OPTIONS = {"handler_cancellation": True, "access_log": None, "shutdown_timeout": 1.0}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str = "127.0.0.1", port: int = 8900, *, access_log: bool = False) -> None:
    """Serve until interrupted (Ctrl-C)."""
    options = dict(RUNNER_OPTIONS)
    if access_log:
        options.pop("access_log")
    web.run_app(build_app(), host=host, port=port, backlog=BACKLOG, print=None, **options)


class FakeProviderServer:
    """The fake providers on a free loopback port, served from a background thread with its own event loop.

    with FakeProviderServer() as server:
        client = OpenAI(api_key="sk-test", base_url=server.openai_base_url)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/openai/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"{self.url}/anthropic"

    @property
    def gemini_base_url(self) -> str:
        return f"{self.url}/gemini"

    def start(self) -> FakeProviderServer:
        if self._thread is not None:
            raise RuntimeError("The fake provider server is already running.")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # reported to the starting thread below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._runner.cleanup())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-provider-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    async def _open(self) -> None:
        options = dict(RUNNER_OPTIONS)
        shutdown_timeout = options.pop("shutdown_timeout")
        self._runner = web.AppRunner(build_app(), shutdown_timeout=shutdown_timeout, **options)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=BACKLOG)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
