"""Images that arrive over HTTP: base64 or data URLs, checked against every limit before any is decoded.

A request's images are first checked from their headers alone (bytes, pixels, aspect ratio, and the
request's total pixels); only then are they decoded, in worker threads, a bounded number at a time
across all requests, so that decoding never blocks the event loop and concurrent requests cannot
multiply the memory one request may take. Each is then reduced to a working size (``max_side``), so
what a request holds while it is encoded is bounded too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from projector.images import ImageError, open_image, to_rgb
from server.errors import APIError, PayloadTooLargeError

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII
)


@dataclass(frozen=True)
class ImageField:
    value: str  # base64 or a data URL, as received
    param: str  # the field it came in, for errors: "items[2].image"


@dataclass(frozen=True)
class DecodedImage:
    data: bytes  # the image file's bytes: what a demonstration id hashes
    image: Image.Image  # RGB, pixels loaded


class ImageDecoder:
    def __init__(
        self,
        *,
        max_bytes: int,
        max_pixels: int,
        max_aspect_ratio: float,
        max_request_pixels: int,
        max_side: int,
        concurrency: int,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.max_request_pixels = max_request_pixels
        self.max_side = max_side
        self._slots = asyncio.Semaphore(concurrency)

    async def decode(self, fields: Sequence[ImageField]) -> list[DecodedImage]:
        """Decode a request's images in order, or raise the 4xx of the first field at fault."""
        headers = await asyncio.to_thread(self._check_all, fields)
        decoded = []
        for field, (data, image) in zip(fields, headers, strict=True):
            async with self._slots:
                try:
                    rgb = await asyncio.to_thread(to_rgb, image, max_side=self.max_side)
                except ImageError as exc:
                    raise APIError(str(exc), param=field.param, code="invalid_image") from None
            decoded.append(DecodedImage(data, rgb))
        return decoded

    def _check_all(self, fields: Sequence[ImageField]) -> list[tuple[bytes, Image.Image]]:
        checked, total = [], 0
        for field in fields:
            data = self._bytes(field)
            try:
                image = open_image(data, max_pixels=self.max_pixels, max_aspect_ratio=self.max_aspect_ratio)
            except ImageError as exc:
                raise APIError(str(exc), param=field.param, code="invalid_image") from None
            total += image.size[0] * image.size[1]
            if total > self.max_request_pixels:
                raise PayloadTooLargeError(
                    f"the request's images have more than the limit of {self.max_request_pixels} pixels "
                    "together",
                    param=field.param,
                    code="images_too_large",
                )
            checked.append((data, image))
        return checked

    def _bytes(self, field: ImageField) -> bytes:
        match = _DATA_URL.match(field.value)
        payload = field.value[match.end() :] if match else field.value
        if match and match.group("mime") and not match.group("mime").startswith("image/"):
            raise APIError(
                f"data URL has media type {match.group('mime')!r}, not image/*",
                param=field.param,
                code="invalid_image",
            )
        payload = "".join(payload.split())  # base64 may be wrapped over lines
        too_large = PayloadTooLargeError(
            f"image is larger than the limit of {self.max_bytes} bytes",
            param=field.param,
            code="image_too_large",
        )
        if len(payload) // 4 * 3 > self.max_bytes + 3:
            raise too_large
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise APIError("not valid base64", param=field.param, code="invalid_base64") from None
        if len(data) > self.max_bytes:
            raise too_large
        return data
