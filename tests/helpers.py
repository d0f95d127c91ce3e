"""Small builders shared by the tests."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def png_bytes(color: str = "red", size: tuple[int, int] = (64, 64), shape: str = "circle") -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    else:
        draw.rectangle(box, fill=color)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def png_b64(color: str = "red", size: tuple[int, int] = (64, 64), shape: str = "circle") -> str:
    return base64.b64encode(png_bytes(color, size, shape)).decode()


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
