"""Turn untrusted image bytes into an RGB PIL image, refusing anything that is not a sane image."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

# A decompression bomb check that does not depend on PIL's process-wide global.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """The bytes are not an image this server can read."""


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode and fully load image bytes as RGB.

    ``Image.open`` is lazy, so the pixels are loaded here: a truncated file fails now, not later
    inside the model.
    """
    if not data:
        raise ImageError("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image has {width}x{height} pixels, more than the limit of {max_pixels}")
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("not a readable image (expected PNG, JPEG, GIF, WebP, BMP or TIFF)") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise ImageError(f"image data is corrupt: {exc}") from exc
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    return image.convert("RGB")
