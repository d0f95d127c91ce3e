"""A tiny LLaVA-architecture model with random weights, built locally in seconds.

No model hub is reachable on the build machines, so tests and the fast embedded default use this:
a CLIP-style vision tower, LLaVA's multimodal projector and a Llama decoder with head_dim 64 (the
smallest head size vLLM's CPU attention accepts), plus a byte-level BPE tokenizer trained here with
an ``<image>`` token. Everything is seeded, so two builds are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch

RECIPE_VERSION = 1
RECIPE_PREFIX = "tiny-llava-v"  # the recipe name of every tiny build: a random-weight model for tests
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]

# Small, varied English so the tokenizer learns real sub-words; the model itself is random.
_CORPUS = """
What is in the image? Describe the picture in one sentence. What color is the shape?
What shape is in the image? Is there a circle? Is there a rectangle? Is there a triangle?
Answer with one word. The answer is yes. The answer is no. A red circle on a white background.
A blue square. A green triangle. A yellow rectangle. A gray cat sits on a sofa next to a window.
An astronaut in a white suit holds a helmet. A cup of coffee on a wooden table. A rocket on a pad.
The quick brown fox jumps over the lazy dog. Two people walk along the beach at sunset.
A dog runs across the grass with a ball in its mouth. A plate of food with rice and vegetables.
purple orange brown black white teal pink circle square triangle rectangle star heart
Question: Answer: Caption: USER: ASSISTANT: Example: Here is an example. Now the query.
one two three four five six seven eight nine ten zero many few some none
"""


def _train_tokenizer(
    vocab_size: int, *, extra_special_tokens: tuple[str, ...] = (), add_bos: bool = True
):  # -> PreTrainedTokenizerFast
    """The tiny models' tokenizer. ``extra_special_tokens`` follow the shared ones (ids of the shared ones
    never move); ``add_bos=False`` leaves prompts without BOS, as Qwen2's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Byte-level: every string encodes, so user text never meets an unknown token.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(extra_special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
    )


HIDDEN, HEAD_DIM = 128, 64


def decoder_args(tokenizer: Any) -> dict[str, Any]:
    """The tiny decoder's config arguments; the tiny builds of other architectures share them."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=HIDDEN // HEAD_DIM,
        num_key_value_heads=HIDDEN // HEAD_DIM,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Wider than the usual 0.02 so random logits have clear winners: greedy decoding then
        # agrees across engines and batch shapes instead of flipping on float rounding.
        initializer_range=0.2,
    )


def clip_vision_config(image_size: int, patch_size: int) -> Any:
    """The tiny CLIP-style vision tower's config; the tiny builds of other architectures share it."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=64,
    )


def build_tiny_llava(out_dir: Path, *, seed: int = 0, image_size: int = 64, patch_size: int = 16) -> Path:
    """Build the tiny model, processor and tokenizer into ``out_dir`` and return it."""
    from transformers import (
        CLIPImageProcessorPil,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size=1024)
    text_config = LlamaConfig(head_dim=HEAD_DIM, **decoder_args(tokenizer))
    vision_config = clip_vision_config(image_size, patch_size)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(out_dir)
    (out_dir / "aim_recipe.json").write_text(
        json.dumps(
            {"name": f"{RECIPE_PREFIX}{RECIPE_VERSION}-seed{seed}", "version": RECIPE_VERSION, "seed": seed},
            indent=2,
        )
    )
    return out_dir


def ensure_tiny_llava(cache_dir: Path, *, seed: int = 0) -> Path:
    """Return the cached tiny model for this recipe and seed, building it on first use."""
    out_dir = Path(cache_dir) / f"tiny-llava-v{RECIPE_VERSION}-seed{seed}"
    if not (out_dir / "aim_recipe.json").exists():
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a build that was killed
        build_tiny_llava(tmp, seed=seed)
        tmp.rename(out_dir)  # a crash mid-build never leaves a half model in the cache
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aim build-tiny", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model-type",
        default="llava",
        choices=["llava", "llava_next", "llava_onevision", "idefics3", "qwen2_vl"],
        help="the architecture; all but llava are built by projector/models/tiny_family.py",
    )
    args = parser.parse_args(argv)
    if args.model_type == "llava":
        print(build_tiny_llava(args.out_dir, seed=args.seed))
    else:
        from projector.models.tiny_family import build_tiny_family

        print(build_tiny_family(args.model_type, args.out_dir, seed=args.seed))
    return 0
