"""Bad input of every kind: a 400 (or 413 for sizes, 415 for the wrong body type) naming the field or the limit,
and no provider call or usage row."""

from __future__ import annotations

import asyncio
import io

import pytest
from django.test import AsyncClient
from PIL import Image

from tests.tasks.conftest import COVER_LETTER, CV_DRAFT, EXTRACT, VALIDATE_IMAGE, call, db_with_threads, usage_rows

pytestmark = db_with_threads


@pytest.fixture(autouse=True)
def _a_config(task_config):
    task_config("openai")


def image_file(kind: str = "PNG", size: tuple[int, int] = (64, 48), name: str = "image.png") -> io.BytesIO:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format=kind)
    buffer.seek(0)
    buffer.name = name
    return buffer


def refused(response, status: int, *, field: str | None = None, mentions: str = "") -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    if field is not None:
        assert error["field"] == field
        assert error["message"].startswith(field)
    assert mentions in error["message"]
    assert response.json()["attempts"] == 0
    assert usage_rows() == []
    return error


@pytest.mark.parametrize(
    ("data", "field", "mentions"),
    [
        ({}, "text", "required"),
        ({"text": None}, "text", "required"),
        ({"text": "   \n"}, "text", "blank"),
        ({"text": 42}, "text", "string"),
        ({"text": ["a posting"]}, "text", "string"),
        ({"text": "A job", "source_url": "not a url"}, "source_url", "http(s) URL"),
        ({"text": "A job", "source_url": "ftp://example.com/job"}, "source_url", "http(s) URL"),
        ({"text": "A job", "source_url": 7}, "source_url", "string"),
        ({"text": "A job", "source_url": "https://example.com/" + "a" * 2000}, "source_url", "2000"),
    ],
)
def test_extraction_refuses_bad_fields(data, field, mentions, auth):
    refused(call(EXTRACT, data, headers=auth), 400, field=field, mentions=mentions)


@pytest.mark.parametrize("path", [CV_DRAFT, COVER_LETTER])
@pytest.mark.parametrize(
    ("data", "field", "mentions"),
    [
        ({"job": "A job"}, "profile", "required"),
        ({"profile": "Me"}, "job", "required"),
        ({"profile": "", "job": "A job"}, "profile", "blank"),
        ({"profile": {}, "job": "A job"}, "profile", "empty object"),
        ({"profile": "Me", "job": ["A", "job"]}, "job", "string or a JSON object"),
        ({"profile": "Me", "job": "A job", "stream": "yes"}, "stream", "true or false"),
        ({"profile": "Me", "job": "A job", "language": "English please"}, "language", "language tag"),
        ({"profile": "Me", "job": "A job", "language": 3}, "language", "language tag"),
    ],
)
def test_drafts_and_letters_refuse_bad_fields(path, data, field, mentions, auth):
    refused(call(path, data, headers=auth), 400, field=field, mentions=mentions)


def test_the_letter_refuses_an_unknown_tone(auth):
    error = refused(
        call(COVER_LETTER, {"profile": "Me", "job": "A job", "tone": "sarcastic"}, headers=auth), 400, field="tone"
    )
    assert "professional" in error["message"]


def test_text_over_the_limit_is_a_413_naming_the_limit(auth, settings):
    settings.TASK_MAX_TEXT_CHARS = 1000
    error = refused(call(EXTRACT, {"text": "x" * 1001}, headers=auth), 413, field="text", mentions="1000")
    assert "TASK_MAX_TEXT_CHARS" in error["message"] and error["limit"] == 1000
    # The limit is on the input's text as a whole.
    error = refused(call(COVER_LETTER, {"profile": "p" * 600, "job": "j" * 401}, headers=auth), 413)
    assert "profile + job: 1001 characters" in error["message"]
    assert call(EXTRACT, {"text": "x" * 1000}, headers=auth).status_code == 200


@pytest.mark.parametrize("path", [EXTRACT, CV_DRAFT, COVER_LETTER])
def test_a_body_that_is_not_a_json_object_is_refused(path, auth):
    refused(call(path, "{not json", headers=auth), 400, mentions="not valid JSON")
    refused(call(path, ["a", "list"], headers=auth), 400, mentions="JSON object")
    refused(call(path, {"text": "x"}, headers=auth, content_type="text/plain"), 415, mentions="application/json")


LONE_SURROGATES = [
    pytest.param(EXTRACT, r'{"text": "A job, cut in an emoji \ud83d"}', "text", id="extraction-text"),
    pytest.param(CV_DRAFT, r'{"profile": "\udc00 Me", "job": "A job"}', "profile", id="draft-profile"),
    pytest.param(COVER_LETTER, r'{"profile": "Me", "job": {"title": ["Dev \ud800"]}}', "job", id="letter-job-object"),
    pytest.param(COVER_LETTER, r'{"profile": {"n\udfffame": "Ada"}, "job": "A job"}', "profile", id="letter-key"),
]


@pytest.mark.parametrize(("path", "body", "field"), LONE_SURROGATES)
def test_a_lone_surrogate_in_a_text_field_is_refused_naming_it_before_any_provider_is_tried(path, body, field, auth):
    from usage.models import ProviderCooldown

    for _ in range(4):  # more than PROVIDER_COOLDOWN_FAILURES: nothing may count against the provider
        error = refused(call(path, body, headers=auth), 400, field=field, mentions="lone surrogate")

    assert "UTF-8" in error["message"]
    assert not ProviderCooldown.objects.exists()


@pytest.mark.parametrize("path", [EXTRACT, CV_DRAFT, COVER_LETTER])
def test_json_nested_too_deeply_is_a_400_without_a_traceback(path, auth, caplog):
    deep_body = '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}"
    deep_profile = '{"profile": {"a": ' + "[" * 40 + '"x"' + "]" * 40 + '}, "job": "A job"}'

    refused(call(path, deep_body, headers=auth), 400, mentions="nested too deeply")
    if path != EXTRACT:
        refused(call(path, deep_profile, headers=auth), 400, mentions="nested too deeply")

    assert not [record for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")]
    assert "Traceback" not in caplog.text


def test_an_object_as_deep_as_the_limit_is_accepted(auth):
    from tasks.inputs import MAX_JSON_DEPTH

    nested: object = "Ada"
    for _ in range(MAX_JSON_DEPTH - 1):
        nested = {"a": nested}

    assert call(CV_DRAFT, {"profile": nested, "job": "A job"}, headers=auth).status_code == 200


def test_an_oversized_json_body_is_a_413(auth, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    error = refused(call(EXTRACT, {"text": "x" * 3000}, headers=auth), 413, mentions="DATA_UPLOAD_MAX_MEMORY_SIZE")
    assert error["limit"] == 2000


@pytest.mark.parametrize("path", [EXTRACT, VALIDATE_IMAGE, CV_DRAFT, COVER_LETTER])
def test_only_post_is_allowed(path, auth):
    async def get():
        return await AsyncClient().get(path, headers=auth)

    response = asyncio.run(get())
    assert response.status_code == 405 and response["Allow"] == "POST"


def upload(file, auth, **kwargs):
    return call(VALIDATE_IMAGE, {"image": file}, headers=auth, multipart=True, **kwargs)


def test_image_validation_needs_an_image(auth):
    refused(call(VALIDATE_IMAGE, {"other": "x"}, headers=auth, multipart=True), 400, field="image", mentions="required")
    refused(call(VALIDATE_IMAGE, {"image": "x"}, headers=auth), 415, mentions="multipart/form-data")


def test_image_type_is_read_from_the_content_not_the_name(auth):
    text = io.BytesIO(b"Senior developer wanted. Apply now!")
    text.name = "posting.png"
    refused(upload(text, auth), 400, field="image", mentions="not a JPEG, PNG, WebP or GIF image")

    bmp = image_file("BMP", name="posting.jpg")
    error = refused(upload(bmp, auth), 400, field="image")
    assert "it is a BMP image" in error["message"]

    empty = io.BytesIO(b"")
    empty.name = "empty.png"
    refused(upload(empty, auth), 400, field="image")


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP", "GIF"])
def test_each_accepted_image_type_passes(kind, auth):
    response = upload(image_file(kind, name="no-extension"), auth)
    assert response.status_code == 200, response.content


def test_a_damaged_image_is_refused(auth):
    data = image_file("PNG").getvalue()
    # The header is intact (so it is recognised as a PNG), the image data's checksum is not.
    damaged = io.BytesIO(data[:-20] + bytes(b ^ 0xFF for b in data[-20:-16]) + data[-16:])
    damaged.name = "damaged.png"
    refused(upload(damaged, auth), 400, field="image", mentions="damaged")


def test_an_image_over_the_size_limit_is_a_413_naming_it(auth, settings):
    settings.TASK_MAX_IMAGE_BYTES = 1024
    big = io.BytesIO(b"\x89PNG" + b"\x00" * 2000)
    big.name = "big.png"
    error = refused(upload(big, auth), 413, field="image", mentions="TASK_MAX_IMAGE_BYTES")
    assert error["limit"] == 1024


def test_image_dimensions_are_bounded(auth, settings):
    settings.TASK_MIN_IMAGE_SIDE = 32
    settings.TASK_MAX_IMAGE_SIDE = 400
    settings.TASK_MAX_IMAGE_PIXELS = 50_000
    refused(upload(image_file(size=(20, 100)), auth), 400, field="image", mentions="TASK_MIN_IMAGE_SIDE")
    refused(upload(image_file(size=(401, 100)), auth), 400, field="image", mentions="TASK_MAX_IMAGE_SIDE")
    error = refused(upload(image_file(size=(300, 200)), auth), 400, field="image", mentions="TASK_MAX_IMAGE_PIXELS")
    assert "300x200 is 60000 pixels" in error["message"]
    assert upload(image_file(size=(250, 200)), auth).status_code == 200


def test_a_decompression_bomb_is_refused_without_decoding_it(auth):
    # A PNG header claiming 100000 x 100000 pixels: refused from the header alone.
    buffer = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = (100000).to_bytes(4, "big") * 2
    bomb = io.BytesIO(bytes(data))
    bomb.name = "bomb.png"
    response = upload(bomb, auth)
    refused(response, 400, field="image")


def test_input_is_checked_only_for_authenticated_callers():
    # An anonymous caller is refused before the input is read: it learns nothing about the input rules.
    response = call(EXTRACT, {"text": ""})
    assert response.status_code == 401
