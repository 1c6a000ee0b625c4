"""providers.clients.pool's one use of an SDK's private module, checked so that an upgrade that moves it fails here."""

import asyncio

import httpx2
import pytest

from providers.clients.pool import HttpPool, aiohttp_classes


def test_the_vendored_aiohttp_client_and_transport_are_where_aditus_takes_them_from():
    client_class, transport_class = aiohttp_classes()

    assert issubclass(client_class, httpx2.AsyncClient)
    assert issubclass(transport_class, httpx2.AsyncBaseTransport)
    assert callable(transport_class.handle_async_request)


def test_a_refused_connection_is_a_connect_error_not_a_timeout(unused_tcp_port):
    async def scenario():
        client = HttpPool().async_client(f"http://127.0.0.1:{unused_tcp_port}")
        try:
            await client.get(f"http://127.0.0.1:{unused_tcp_port}/")
        finally:
            await client.aclose()

    with pytest.raises(httpx2.ConnectError):
        asyncio.run(scenario())


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
