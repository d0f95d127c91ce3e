"""Zero-shot checks of aim-mini on easy-VQA test images: does the answer name the right shape/colour?

The connector never saw questions (it was trained on descriptions only), so this measures whether
the image information it passes is usable by the decoder for a new instruction.
"""

from __future__ import annotations

import re

import torch

from .data import COLORS, SHAPES, ShapeImage

QUESTIONS = {
    "shape": ("What shape is in the image?", SHAPES),
    "color": ("What color is the shape?", COLORS),
}
_ALIASES = {"grey": "gray", "square": "rectangle", "circular": "circle", "triangular": "triangle",
            "rectangular": "rectangle", "oval": "circle"}


def first_mention(text: str, vocab: tuple[str, ...]) -> str | None:
    """The first word of ``vocab`` (aliases such as 'grey' or 'square' included) in ``text``."""
    for word in re.findall(r"[a-z]+", text.lower()):
        word = _ALIASES.get(word, word)
        if word in vocab:
            return word
    return None


@torch.no_grad()
def answer(model, processor, items: list[ShapeImage], question: str, max_new_tokens: int = 12,
           batch_size: int = 16) -> list[str]:
    """Greedy answers of ``model`` to ``question`` about each image (chat template, one image each)."""
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    out: list[str] = []
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        images = [Image.open(it.path).convert("RGB") for it in chunk]
        inputs = processor(images=images, text=[prompt] * len(chunk), return_tensors="pt")  # same length: no padding
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
        out += processor.batch_decode(gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def zero_shot_accuracy(model, processor, items: list[ShapeImage], attribute: str) -> tuple[float, list[str]]:
    """Share of ``items`` whose answer first names the right ``attribute`` ("shape" or "color")."""
    question, vocab = QUESTIONS[attribute]
    answers = answer(model, processor, items, question)
    truth = [getattr(it, attribute) for it in items]
    hits = sum(first_mention(a, vocab) == t for a, t in zip(answers, truth))
    return hits / max(len(items), 1), answers
