"""Images that arrive over HTTP: base64 or data URLs, checked against the size limits."""

from __future__ import annotations

import base64
import binascii
import re

from PIL import Image

from projector.images import ImageError, decode_image
from server.errors import APIError, PayloadTooLargeError

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII
)


def decode_image_field(
    value: str, *, param: str, max_bytes: int, max_pixels: int
) -> tuple[bytes, Image.Image]:
    """Return the image's bytes (what its id hashes) and the decoded image, or raise a 4xx."""
    match = _DATA_URL.match(value)
    payload = value[match.end() :] if match else value
    if match and match.group("mime") and not match.group("mime").startswith("image/"):
        raise APIError(
            f"data URL has media type {match.group('mime')!r}, not image/*",
            param=param,
            code="invalid_image",
        )
    payload = "".join(payload.split())  # base64 may be wrapped over lines
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise PayloadTooLargeError(
            f"image is larger than the limit of {max_bytes} bytes",
            param=param,
            code="image_too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError("not valid base64", param=param, code="invalid_base64") from None
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"image is larger than the limit of {max_bytes} bytes",
            param=param,
            code="image_too_large",
        )
    try:
        return data, decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise APIError(f"{exc}", param=param, code="invalid_image") from None
