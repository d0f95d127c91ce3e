"""What breaks when Qwen2-VL's query travels as prompt embeddings, measured on a tiny random Qwen2-VL.

    python -m bench.qwen2_vl_mrope      # ~30 s; prints the positions and a table, writes bench/out/qwen2_vl_mrope.md

AIM hands the engine ``inputs_embeds`` only: the query's image features are spliced in, but positions
are not part of the embeddings, and an engine given embeddings places token i at position i on all
three M-RoPE axes (transformers' ``generate(inputs_embeds=...)``; vLLM's runner does the same for an
embeddings-only request). Qwen2-VL's own forward gives image token (row r, column c) the position
(s, s + r, s + c) and every later token s + max(rows, columns) + k instead of s + rows x columns + k.

For each query this compares, against the model's own ``generate`` from pixels:
* ``embeds, 1-D``: the captured input embeddings at 1-D positions (what serving them would do);
* ``embeds, M-RoPE``: the same embeddings with the model's own 3-D positions passed explicitly, which
  shows the positions are the only thing lost;
and text-only queries, where M-RoPE's three axes are equal and the 1-D path is exact.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from projector.models.tiny_family import ensure_tiny_family
from projector.processors import load_processor
from projector.training.scenes import shape_image

QUESTION = "What shape is in the image?"
# What Qwen2-VL's chat template writes around an image; the processor expands <image> to its tokens.
IMAGE_PROMPT = "<|vision_start|><image><|vision_end|>\n{text}"
SIZES = [(64, 64), (64, 48), (48, 64), (96, 64), (64, 32), (32, 32), (80, 80), (96, 96)]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "pink"]
NEW_TOKENS = 16


def load(cache_dir: Path):  # -> (model, processor)
    from transformers import AutoModelForImageTextToText

    model_dir = ensure_tiny_family("qwen2_vl", cache_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, load_processor(str(model_dir), "qwen2_vl")


def captured_embeds(model, inputs: dict) -> torch.Tensor:
    """The ``inputs_embeds`` Qwen2-VL's forward hands its decoder: image features spliced in."""
    seen: list[torch.Tensor] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True
    )
    try:
        model.model(**inputs, use_cache=False)
    finally:
        hook.remove()
    model.model.rope_deltas = None  # the model caches position deltas between calls
    return seen[0]


def greedy(model, **kwargs) -> list[int]:
    model.model.rope_deltas = None
    if "inputs_embeds" in kwargs and "attention_mask" not in kwargs:
        kwargs["attention_mask"] = torch.ones(kwargs["inputs_embeds"].shape[:2], dtype=torch.long)
    out = model.generate(**kwargs, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    n = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else 0
    return out[0, n:].tolist()


def last_logits(model, embeds: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    model.model.rope_deltas = None
    out = model(inputs_embeds=embeds, position_ids=position_ids, use_cache=False)
    return out.logits[0, -1].float()


def compare(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(max |logit difference|, KL(reference || other)) of the next-token distributions."""
    kl = torch.nn.functional.kl_div(
        other.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="sum"
    )
    return float((reference - other).abs().max()), float(kl)


def agreement(a: list[int], b: list[int]) -> int:
    """Leading tokens two greedy continuations share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


@torch.inference_mode()
def run(cache_dir: Path) -> str:
    model, processor = load(cache_dir)
    torch.manual_seed(0)
    rows: list[str] = []
    shown_positions = False
    for i, size in enumerate(SIZES):
        image = shape_image(size, COLORS[i % len(COLORS)], "circle" if i % 2 else "square")
        for with_image in (True, False):
            if with_image:
                prompt = IMAGE_PROMPT.format(text=QUESTION)
                inputs = dict(
                    processor(images=image, text=prompt, return_tensors="pt", return_mm_token_type_ids=True)
                )
            else:
                inputs = dict(processor(text=f"Question {i}: {QUESTION}", return_tensors="pt"))
            ids = inputs["input_ids"]
            reference_tokens = greedy(model, **inputs)
            model.model.rope_deltas = None
            reference = model(**inputs, use_cache=False).logits[0, -1].float()
            embeds = captured_embeds(model, inputs)
            if with_image:
                positions, _ = model.model.get_rope_index(
                    ids,
                    mm_token_type_ids=inputs["mm_token_type_ids"],
                    image_grid_thw=inputs["image_grid_thw"],
                )
            else:
                positions = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
            flat_tokens = greedy(model, inputs_embeds=embeds)
            flat_diff, flat_kl = compare(reference, last_logits(model, embeds, None))
            mrope_diff, mrope_kl = compare(reference, last_logits(model, embeds, positions))
            image_tokens = int((ids == model.config.image_token_id).sum())
            if with_image and not shown_positions:
                shown_positions = True
                is_image = (ids[0] == model.config.image_token_id).nonzero().flatten()
                first, last = int(is_image[0]), int(is_image[-1])
                print(f"query {size[0]}x{size[1]} px: {ids.shape[1]} tokens, image tokens at {first}..{last}")
                for name, k in (("first image token", first), ("last image token", last), ("next token", last + 1),
                                ("last token", ids.shape[1] - 1)):  # fmt: skip
                    print(
                        f"  {name:18} 1-D position {k:3}   M-RoPE (t, h, w) {tuple(positions[:, 0, k].tolist())}"
                    )
            rows.append(
                f"| {size[0]}x{size[1]} | {'image' if with_image else 'text only'} | {image_tokens} "
                f"| {int(positions[:, 0, -1].max())} / {ids.shape[1] - 1} "
                f"| {agreement(reference_tokens, flat_tokens)}/{NEW_TOKENS} | {flat_diff:.3f} | {flat_kl:.4f} "
                f"| {mrope_diff:.1e} | {mrope_kl:.1e} |"
            )
    header = (
        "| image | query | image tokens | last position M-RoPE / 1-D | greedy tokens equal, embeds 1-D "
        "| max abs logit diff, 1-D | KL, 1-D | max abs logit diff, M-RoPE | KL, M-RoPE |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    return header + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "aim-serve" / "bench")
    parser.add_argument("--out", type=Path, default=Path("bench/out/qwen2_vl_mrope.md"))
    args = parser.parse_args(argv)
    table = run(args.cache_dir)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
