"""Static files from the app server (WhiteNoise), in both middleware modes."""

import asyncio
import gzip
from pathlib import Path

import django
import pytest
from django.test import AsyncClient, Client

BASE_CSS = Path(django.__file__).parent / "contrib/admin/static/admin/css/base.css"


@pytest.fixture
def development_static(settings):
    """Files found in the apps, as in development and tests (DEBUG when settings load)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.WHITENOISE_AUTOREFRESH = True
    settings.WHITENOISE_USE_FINDERS = True


@pytest.fixture
def collected_static(settings, tmp_path):
    """A STATIC_ROOT as collectstatic leaves it, served as in production."""
    (tmp_path / "app.css").write_bytes(b"body { color: black; }\n" * 200)
    (tmp_path / "app.css.gz").write_bytes(gzip.compress((tmp_path / "app.css").read_bytes()))
    settings.STATIC_ROOT = tmp_path
    settings.WHITENOISE_AUTOREFRESH = False
    settings.WHITENOISE_USE_FINDERS = False
    return tmp_path


def get(path: str, **headers):
    async def request():
        return await AsyncClient().get(path, headers=headers)

    return asyncio.run(request())


def test_an_admin_asset_is_served_in_development_through_both_modes(development_static):
    sync_response = Client().get("/static/admin/css/base.css")
    async_response = get("/static/admin/css/base.css")

    for response in (sync_response, async_response):
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/css")
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert body == BASE_CSS.read_bytes()


def test_a_request_that_is_not_for_a_static_file_passes_on(development_static):
    assert get("/static/admin/css/no-such-file.css").status_code == 404
    assert get("/healthz").json() == {"status": "ok"}


def test_collected_files_are_served_from_memory_under_asgi(collected_static):
    content = (collected_static / "app.css").read_bytes()

    whole = get("/static/app.css")
    compressed = get("/static/app.css", **{"Accept-Encoding": "gzip"})
    part = get("/static/app.css", Range="bytes=0-9")

    assert (whole.status_code, whole.content, whole["Content-Length"]) == (200, content, str(len(content)))
    assert not whole.streaming  # no synchronous file iterator for the ASGI handler to warn about
    assert compressed["Content-Encoding"] == "gzip" and gzip.decompress(compressed.content) == content
    assert (part.status_code, part.content) == (206, content[:10])


def test_head_sends_the_headers_without_the_body(collected_static):
    async def head():
        return await AsyncClient().head("/static/app.css")

    response = asyncio.run(head())

    assert response.status_code == 200 and response.content == b""
    assert int(response["Content-Length"]) == (collected_static / "app.css").stat().st_size
