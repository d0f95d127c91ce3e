"""Zero-shot checks of aim-mini on easy-VQA test images: does the answer name the right shape/colour?

The connector never saw questions (it was trained on descriptions only), so this measures whether
the image information it passes is usable by the decoder for a new instruction.
"""

from __future__ import annotations

import re

import torch

from .data import COLORS, SHAPES, ShapeImage, load_rgb

QUESTIONS = {
    "shape": ("What shape is in the image?", SHAPES),
    "color": ("What color is the shape?", COLORS),
}
_ALIASES = {
    "grey": "gray",
    "square": "rectangle",
    "circular": "circle",
    "triangular": "triangle",
    "rectangular": "rectangle",
    "oval": "circle",
}


def first_mention(text: str, vocab: tuple[str, ...]) -> str | None:
    """The first word of ``vocab`` (aliases such as 'grey' or 'square' included) in ``text``."""
    for word in re.findall(r"[a-z]+", text.lower()):
        word = _ALIASES.get(word, word)
        if word in vocab:
            return word
    return None


@torch.no_grad()
def answer(
    model, processor, images: list, question: str, max_new_tokens: int = 12, batch_size: int = 16
) -> list[str]:
    """Greedy answers of ``model`` to ``question`` about each PIL image (chat template, one image each)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    out: list[str] = []
    for s in range(0, len(images), batch_size):
        chunk = images[s : s + batch_size]
        inputs = processor(
            images=chunk, text=[prompt] * len(chunk), return_tensors="pt"
        )  # same length: no padding
        gen = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
        out += processor.batch_decode(gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def describe_accuracy(model, processor, items: list[ShapeImage]) -> tuple[dict[str, float], list[str]]:
    """The trained task itself: share of "Describe the image." answers that first name the right
    shape and the right colour."""
    from .data import DESCRIBE_PROMPT

    answers = answer(model, processor, [load_rgb(it.path) for it in items], DESCRIBE_PROMPT)
    acc = {
        attr: sum(first_mention(a, vocab) == getattr(it, attr) for it, a in zip(items, answers, strict=True))
        / max(len(items), 1)
        for attr, (_, vocab) in QUESTIONS.items()
    }
    return acc, answers


def zero_shot_accuracy(
    model, processor, items: list[ShapeImage], attribute: str, max_new_tokens: int = 12
) -> tuple[float, list[str]]:
    """Share of ``items`` whose answer first names the right ``attribute`` ("shape" or "color")."""
    question, vocab = QUESTIONS[attribute]
    images = [load_rgb(it.path) for it in items]
    answers = answer(model, processor, images, question, max_new_tokens=max_new_tokens)
    truth = [getattr(it, attribute) for it in items]
    hits = sum(first_mention(a, vocab) == t for a, t in zip(answers, truth, strict=True))
    return hits / max(len(items), 1), answers


def main(argv: list[str] | None = None) -> int:
    """python -m projector.models.aim_mini.evaluate MODEL_DIR [--n 48] [--random-connector]

    Prints JSON: the share of answers naming the right shape/colour for "Describe the image."
    (the trained task) and for the zero-shot questions in ``QUESTIONS``."""
    import argparse
    import json
    import sys

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from projector.models import register_model_types

    from .build import reset_connector
    from .train_connector import eval_items

    p = argparse.ArgumentParser(
        description="zero-shot shape/colour answers of aim-mini on easy-VQA test images"
    )
    p.add_argument("model_dir")
    p.add_argument("--n", type=int, default=48, help="test images (seeded sample)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--random-connector", action="store_true", help="replace the connector by a random one")
    p.add_argument("--show", type=int, default=4, help="answers to print per question")
    args = p.parse_args(argv)
    register_model_types()
    model = LlavaForConditionalGeneration.from_pretrained(args.model_dir).eval()
    processor = AutoProcessor.from_pretrained(args.model_dir)
    if args.random_connector:
        reset_connector(model, seed=0)
    items = eval_items(args.n, seed=args.seed)
    result: dict = {}
    result["describe"], answers = describe_accuracy(model, processor, items)
    for it, a in list(zip(items, answers, strict=True))[: args.show]:
        print(f"  [describe] truth={it.color} {it.shape} answer={a!r}", file=sys.stderr)
    result["zero_shot"] = {}
    for attribute in QUESTIONS:
        acc, answers = zero_shot_accuracy(model, processor, items, attribute)
        result["zero_shot"][attribute] = acc
        for it, a in list(zip(items, answers, strict=True))[: args.show]:
            print(f"  [{attribute}] truth={getattr(it, attribute):9s} answer={a!r}", file=sys.stderr)
    print(json.dumps({"n": len(items), "random_connector": args.random_connector, "accuracy": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
