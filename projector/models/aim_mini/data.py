"""The easy-VQA data set (PyPI ``easy-vqa``, MIT): its one loader, and image descriptions built from it.

easy-VQA has 64x64 images of one coloured shape (3 shapes, 8 colours) with question-answer pairs.
``load_questions`` reads a split's pairs (``aim eval``'s benchmark). For connector training only each
image's *shape* and *colour* are read from those pairs (``load_split``); the connector is trained on
descriptions ("A red circle."), never on the question-answer format.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from .sources import easy_vqa_dir

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "yellow", "black", "gray", "brown", "teal")

DESCRIBE_PROMPT = "Describe the image."
TEMPLATES = (
    "A {color} {shape}.",
    "A {color} {shape} on a light background.",
    "The image shows a {color} {shape}.",
    "There is a {color} {shape} in the image.",
    "A single {color} {shape} on a plain background.",
    "This picture contains one {color} {shape}.",
)


@dataclass(frozen=True)
class ShapeImage:
    path: Path
    image_id: int
    shape: str
    color: str


def _attributes(qas: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Shape and colour of one image from its question-answer pairs.

    In order of use: open questions answer with the attribute ("what color is the shape?" -> "blue")
    and may name the other one ("what color is the triangle?", "what is the blue shape?"); yes/no
    questions say which shapes/colours are present or absent, and an attribute is also known once
    all others are ruled out.
    """
    shape = color = None
    present_s, present_c, absent_s, absent_c = set(), set(), set(), set()
    for q, a in qas:
        words = q.rstrip("?").split()
        named_s = [w for w in words if w in SHAPES]
        named_c = [w for w in words if w in COLORS]
        if a in SHAPES:
            shape = shape or a
            color = color or (named_c[0] if named_c else None)
        elif a in COLORS:
            color = color or a
            shape = shape or (named_s[0] if named_s else None)
        elif a in ("yes", "no"):
            positive = (a == "yes") != ("not" in words or "no" in words)
            (present_s if positive else absent_s).update(named_s)
            (present_c if positive else absent_c).update(named_c)
    if shape is None:
        left = [s for s in SHAPES if s not in absent_s]
        shape = next(iter(present_s), None) or (left[0] if len(left) == 1 else None)
    if color is None:
        left = [c for c in COLORS if c not in absent_c]
        color = next(iter(present_c), None) or (left[0] if len(left) == 1 else None)
    return shape, color


@dataclass(frozen=True)
class EasyVqaQuestion:
    image: Path
    question: str
    answer: str
    image_id: int

    @property
    def qtype(self) -> str:
        """``yes/no``, ``color`` or ``shape``: what kind of answer the question wants."""
        return "yes/no" if self.answer in ("yes", "no") else "color" if self.answer in COLORS else "shape"


def load_questions(split: str = "test") -> list[EasyVqaQuestion]:
    """A split's question-answer pairs in file order: ``<split>/questions.json`` is a list of
    ``[question, answer, image_id]`` and ``<split>/images/<image_id>.png`` the images."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = easy_vqa_dir() / split
    return [
        EasyVqaQuestion(base / "images" / f"{int(image_id)}.png", question, answer, int(image_id))
        for question, answer, image_id in json.loads((base / "questions.json").read_text())
    ]


def load_split(split: str = "train") -> list[ShapeImage]:
    """The images of an easy-VQA split whose shape and colour its questions determine, in id order.

    easy-VQA 1.0: 3,578 of 4,000 train and 888 of 1,000 test images."""
    by_image: dict[int, list[tuple[str, str]]] = {}
    paths: dict[int, Path] = {}
    for q in load_questions(split):
        by_image.setdefault(q.image_id, []).append((q.question.lower(), q.answer.lower()))
        paths[q.image_id] = q.image
    out = []
    for image_id in sorted(by_image):
        shape, color = _attributes(by_image[image_id])
        if shape is None or color is None:
            continue  # its questions do not pin both down: left out (easy-VQA 1.0 keeps 3,578 / 888)
        out.append(ShapeImage(paths[image_id], image_id, shape, color))
    return out


def load_rgb(path: Path):
    """An image file as an RGB PIL image, file closed."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def describe(item: ShapeImage, rng: random.Random | None = None, template: int | None = None) -> str:
    """One description of the image: a random phrasing, or phrasing number ``template``."""
    if template is None:
        template = (rng or random).randrange(len(TEMPLATES))
    return TEMPLATES[template].format(color=item.color, shape=item.shape)
