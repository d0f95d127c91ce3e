"""The one shape renderer: scenes are reproducible, single-shape images fill their box."""

from __future__ import annotations

import random

import pytest
from PIL import ImageDraw

from projector.training.scenes import SHAPES, draw_shape, render_scene, shape_image


def test_scenes_are_a_function_of_the_seed() -> None:
    a, b = render_scene(random.Random(5)), render_scene(random.Random(5))
    assert a.image.tobytes() == b.image.tobytes() and a.objects == b.objects
    assert 1 <= len(a.objects) <= 3 and all(shape in SHAPES for _, shape, _ in a.objects)


def test_a_single_shape_fills_the_middle_three_fifths() -> None:
    image = shape_image((90, 70), "red", "rectangle")
    assert image.size == (90, 70)
    assert image.getpixel((18, 14)) == (255, 0, 0) and image.getpixel((72, 56)) == (255, 0, 0)
    assert image.getpixel((17, 14)) == (255, 255, 255) and image.getpixel((73, 56)) == (255, 255, 255)
    # a square is the box too; a circle leaves the box's corners empty
    assert (
        shape_image((64, 64), "red", "square").tobytes()
        == shape_image((64, 64), "red", "rectangle").tobytes()
    )
    assert shape_image((64, 64), "red", "circle").getpixel((12, 12)) == (255, 255, 255)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_draws_around_its_centre(shape: str) -> None:
    image = shape_image((64, 64), "blue", shape, background="white")
    assert image.getpixel((32, 32)) == (0, 0, 255)
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        draw_shape(ImageDraw.Draw(shape_image((8, 8), "red", "circle")), "blob", 4, 4, 2, "red")
