"""The one shape renderer: a shape drawn on a PIL canvas, a single-shape image, and scenes of shapes.

Training's generic episodes, the benchmarks (``bench/shots.py``) and the tests' images all draw here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "star", "ellipse", "diamond", "hexagon", "cross", "triangle")
SCENE_SHAPES = SHAPES
SCENE_COLORS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (235, 210, 20),
    "orange": (245, 140, 20), "purple": (130, 50, 170), "pink": (240, 130, 190), "black": (15, 15, 15),
    "white": (250, 250, 250), "gray": (128, 128, 128), "brown": (120, 70, 30), "teal": (20, 140, 140),
}  # fmt: skip
SCENE_BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "light blue": (190, 215, 245),
                     "beige": (235, 225, 200), "dark green": (20, 70, 40), "light gray": (215, 215, 215)}  # fmt: skip

Color = str | tuple[int, int, int]


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    rx: float,
    fill: Color,
    ry: float | None = None,
) -> None:
    """Draw ``shape`` centred on (cx, cy) in the box reaching ``rx`` either side (``ry`` up and down,
    default ``rx``). ``square`` fills 0.85 of the box, ``rectangle`` all of it."""
    ry = rx if ry is None else ry
    if shape == "circle":
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
    elif shape == "ellipse":
        draw.ellipse([cx - rx, cy - ry * 0.55, cx + rx, cy + ry * 0.55], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - rx * 0.85, cy - ry * 0.85, cx + rx * 0.85, cy + ry * 0.85], fill=fill)
    elif shape == "rectangle":
        draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - ry), (cx + rx, cy), (cx, cy + ry), (cx - rx, cy)], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - ry), (cx + rx, cy + ry * 0.8), (cx - rx, cy + ry * 0.8)], fill=fill)
    elif shape == "hexagon":
        draw.polygon(
            [(cx + rx * math.cos(a * math.pi / 3), cy + ry * math.sin(a * math.pi / 3)) for a in range(6)],
            fill=fill,
        )
    elif shape == "star":
        pts = []
        for i in range(10):
            k = 1.0 if i % 2 == 0 else 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rx * k * math.cos(a), cy + ry * k * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        draw.rectangle([cx - rx, cy - ry * 0.35, cx + rx, cy + ry * 0.35], fill=fill)
        draw.rectangle([cx - rx * 0.35, cy - ry, cx + rx * 0.35, cy + ry], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}, rectangle")


def shape_image(size: tuple[int, int], color: Color, shape: str, background: Color = "white") -> Image.Image:
    """One shape in the middle three fifths of a plain ``size`` (width, height) image; a ``square``
    here fills that box (as ``rectangle`` does), so a single-shape image's shape is its box."""
    w, h = size
    x0, y0, x1, y1 = w // 5, h // 5, 4 * w // 5, 4 * h // 5
    image = Image.new("RGB", (w, h), background)
    draw_shape(ImageDraw.Draw(image), "rectangle" if shape == "square" else shape,
               (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, color, ry=(y1 - y0) / 2)  # fmt: skip
    return image


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: tuple[tuple[str, str, str], ...]  # (colour, shape, position)
    background: str


def render_scene(rng: random.Random, size: int = 128) -> Scene:
    """1-3 shapes in distinct cells of a 3x3 grid on a plain background."""
    background = rng.choice(list(SCENE_BACKGROUNDS))
    image = Image.new("RGB", (size, size), SCENE_BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    n = rng.choice((1, 1, 2, 2, 3))
    cells = rng.sample(range(9), n)
    colors = [c for c in SCENE_COLORS if SCENE_COLORS[c] != SCENE_BACKGROUNDS[background]]
    objects = []
    cell = size / 3
    for c in cells:
        row, col = divmod(c, 3)
        color, shape = rng.choice(colors), rng.choice(SCENE_SHAPES)
        cx = (col + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        cy = (row + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        draw_shape(draw, shape, cx, cy, cell * rng.uniform(0.3, 0.45), SCENE_COLORS[color])
        vertical = ("top", "middle", "bottom")[row]
        horizontal = ("left", "center", "right")[col]
        position = "center" if (row, col) == (1, 1) else f"{vertical} {horizontal}".replace("middle ", "")
        position = position.replace(" center", "")
        objects.append((color, shape, position))
    return Scene(image, tuple(objects), background)
