"""Checking an uploaded image: type from its content (not its name or declared type), size and dimensions."""

from __future__ import annotations

import io
import warnings

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http.multipartparser import MultiPartParserError
from PIL import Image, UnidentifiedImageError

from providers.clients.base import ImageInput
from tasks.responses import TaskError

FIELD = "image"
# What all three providers take as image input.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


def _invalid(problem: str) -> TaskError:
    return TaskError(400, "invalid_input", f"{FIELD}: {problem}", field=FIELD)


def image_input(request) -> ImageInput:
    """The `image` of a multipart request, checked; raise `TaskError` (400 or 413) saying what is wrong."""
    if request.content_type != "multipart/form-data":
        raise TaskError(
            415,
            "unsupported_media_type",
            f"Send the image as multipart/form-data with the file in the '{FIELD}' field.",
        )
    try:
        upload = request.FILES.get(FIELD)
    except (RequestDataTooBig, TooManyFieldsSent, MultiPartParserError) as error:
        raise TaskError(400, "invalid_input", f"The multipart body cannot be read: {error}") from None
    if upload is None:
        raise _invalid(f"this field is required (a file in the multipart field '{FIELD}').")
    limit = settings.TASK_MAX_IMAGE_BYTES
    if upload.size > limit:
        raise TaskError(
            413,
            "input_too_large",
            f"{FIELD}: {upload.size} bytes, over the limit of {limit} bytes (TASK_MAX_IMAGE_BYTES).",
            field=FIELD,
            limit=limit,
        )
    data = upload.read()
    if not data:
        raise _invalid("the file is empty.")
    return check_image(data)


def check_image(data: bytes) -> ImageInput:
    """Check `data` is a JPEG, PNG, WebP or GIF of bounded dimensions; return it with its real MIME type."""
    with warnings.catch_warnings():
        # Pillow warns (and past twice the limit, raises) about decompression bombs; our own bounds are below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                kind = image.format
                width, height = image.size
                image.verify()  # structure and checksums, without decoding the pixels
        except UnidentifiedImageError:
            found = _other_format(data)
            raise _invalid(f"not a JPEG, PNG, WebP or GIF image{found} (checked from its content).") from None
        except Image.DecompressionBombError:
            raise _invalid("its dimensions are far over the limits.") from None
        except Exception:  # Pillow raises many types (SyntaxError, OSError, ValueError) for a broken file
            raise _invalid("the image is damaged or truncated.") from None
    low, high, pixels = settings.TASK_MIN_IMAGE_SIDE, settings.TASK_MAX_IMAGE_SIDE, settings.TASK_MAX_IMAGE_PIXELS
    if min(width, height) < low or max(width, height) > high:
        raise _invalid(
            f"{width}x{height} pixels; each side must be from {low} (TASK_MIN_IMAGE_SIDE) "
            f"to {high} (TASK_MAX_IMAGE_SIDE) pixels."
        )
    if width * height > pixels:
        raise _invalid(
            f"{width}x{height} is {width * height} pixels, over the limit of {pixels} (TASK_MAX_IMAGE_PIXELS)."
        )
    return ImageInput(data=data, mime_type=MIME_TYPES[kind])


def _other_format(data: bytes) -> str:
    """`: it is a BMP image` when Pillow knows the format, else nothing (only on the error path)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return f"; it is a {image.format} image"
    except Exception:
        return ""
