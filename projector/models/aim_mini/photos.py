"""Zero-shot naming check: does aim-mini name the main object of photos it never trained on?

    python -m projector.models.aim_mini.photos MODEL_DIR [--photos DIR] [--json OUT]

Every photo of ``DIR/photos.json`` (default: the repository's ``examples/images``) is asked "What is
in the picture?" three ways: as is, mirrored, and centre-cropped to its middle 75 %. An answer names
the object when it contains one of the photo's accepted names as whole words (case-insensitive).
Greedy, through the model's chat template: the prompt the server's query template renders.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from .data import load_rgb
from .evaluate import answer

QUESTION = "What is in the picture?"
DEFAULT_PHOTOS = Path(__file__).resolve().parents[3] / "examples" / "images"
MAX_NEW_TOKENS = 24


def _crop(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.crop((w // 8, h // 8, w - w // 8, h - h // 8))


VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "as is": lambda image: image,
    "mirrored": ImageOps.mirror,
    "cropped": _crop,
}


@dataclass(frozen=True)
class Photo:
    file: str
    image: Image.Image
    names: tuple[str, ...]


def load_photos(directory: Path = DEFAULT_PHOTOS) -> list[Photo]:
    manifest = json.loads((Path(directory) / "photos.json").read_text())["photos"]
    return [Photo(f, load_rgb(Path(directory) / f), tuple(names)) for f, names in sorted(manifest.items())]


def names_object(text: str, names: tuple[str, ...]) -> bool:
    """Whether ``text`` contains one of ``names`` as whole words (plural -s/-es allowed)."""
    return any(re.search(rf"\b{re.escape(n)}(e?s)?\b", text, flags=re.IGNORECASE) for n in names)


def naming_check(model, processor, photos: list[Photo]) -> dict:
    """Per photo and variant: the answer and whether it names the object; and the overall rate."""
    rows = []
    for variant, transform in VARIANTS.items():
        images = [transform(p.image) for p in photos]
        answers = answer(model, processor, images, QUESTION, max_new_tokens=MAX_NEW_TOKENS)
        for photo, text in zip(photos, answers, strict=True):
            text = text.strip()
            rows.append(
                {
                    "photo": photo.file,
                    "variant": variant,
                    "answer": text,
                    "named": names_object(text, photo.names),
                }
            )
    named = sum(r["named"] for r in rows)
    return {
        "question": QUESTION,
        "named": named,
        "answers": len(rows),
        "rate": named / len(rows),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from projector.models import register_model_types

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder with photos.json")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    register_model_types()
    model = LlavaForConditionalGeneration.from_pretrained(args.model_dir).eval()
    processor = AutoProcessor.from_pretrained(args.model_dir)
    result = naming_check(model, processor, load_photos(args.photos))
    for row in result["rows"]:
        mark = "yes" if row["named"] else "NO "
        print(f"{mark} {row['photo']:<15} {row['variant']:<9} {row['answer']!r}")
    print(f"named the main object in {result['named']}/{result['answers']} answers ({result['rate']:.0%})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
