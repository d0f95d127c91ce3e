"""Turn untrusted image bytes into an RGB PIL image, refusing anything that is not a sane image.

Two steps, so that a caller can check every image of a request before decoding any of them:
``open_image`` reads only the header (format, size) and applies the per-image limits; ``to_rgb`` decodes
the pixels. ``decode_image`` does both.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

# Exactly the formats the API documents; Pillow would otherwise try every plugin it has (TGA, PCX, PSD,
# EPS, ...), each one more parser exposed to untrusted bytes.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000
# A 60000x1 strip is a few hundred bytes but, resized by a processor to a 224-pixel short side, becomes
# billions of pixels: the aspect ratio bounds what any resize can make of an image.
DEFAULT_MAX_ASPECT_RATIO = 20.0


class ImageError(ValueError):
    """The bytes are not an image this server can read."""


def open_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
) -> Image.Image:
    """Read the header only (no pixels are decoded) and check the image against the limits."""
    if not data:
        raise ImageError("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"not a readable image (expected {', '.join(ALLOWED_FORMATS)})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # a header that lies or is cut short
        raise ImageError(f"image data is corrupt: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    if width * height > max_pixels:
        raise ImageError(f"image has {width}x{height} pixels, more than the limit of {max_pixels}")
    if max(width, height) / min(width, height) > max_aspect_ratio:
        raise ImageError(
            f"image is {width}x{height}, more elongated than the limit of {max_aspect_ratio:g}:1"
        )
    return image


def to_rgb(image: Image.Image, *, max_side: int | None = None) -> Image.Image:
    """Decode the pixels now (``Image.open`` is lazy: a truncated file fails here, not inside the model).

    With ``max_side``, a larger image is reduced to fit it before it becomes RGB, so what is kept costs
    at most ``max_side``² x 3 bytes whatever arrived. Model processors resize far below that anyway
    (336 px for LLaVA-1.5, at most 1344 for LLaVA-NeXT's grids), so their input barely changes.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image data is corrupt: {exc}") from exc
    if max_side is not None and max(image.size) > max_side:
        if image.mode not in ("L", "RGB"):  # resampling works on these; "L" keeps a 1-bit image small
            image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return image.convert("RGB")


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    max_side: int | None = None,
) -> Image.Image:
    return to_rgb(
        open_image(data, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio), max_side=max_side
    )
