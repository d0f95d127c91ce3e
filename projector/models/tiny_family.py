"""Tiny random-weight relatives of ``tiny`` for the other architectures the adapter serves.

Each is the real transformers architecture built from its config with small sizes and seeded random
weights, with the real image-token geometry where it is cheap (any-resolution tiles and their newline
tokens for LLaVA-NeXT and LLaVA-OneVision, tiles with row/column markers and pixel shuffle for
Idefics3), a decoder with head_dim 64 (the smallest vLLM's CPU attention takes) and the tokenizer of
``tiny`` with the extra tokens each processor needs. They exist so that every supported model type is
tested end to end on a machine without a model hub; their answers are meaningless.

``qwen2_vl`` is built too, only to measure why it cannot be served (``bench/qwen2_vl_mrope.py``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from projector.models.tiny import (
    HEAD_DIM,
    HIDDEN,
    IMAGE_TOKEN,
    _train_tokenizer,
    clip_vision_config,
    decoder_args,
)

RECIPE_VERSION = 1
RECIPE_PREFIX = "tiny-family-v"  # recipe names of these builds: random-weight models for tests
VOCAB_SIZE = 1024

# Idefics3's processor writes these around each image tile; they must be single tokens.
IDEFICS3_TOKENS = (
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)),
)


def _llama(tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(head_dim=HEAD_DIM, **decoder_args(tokenizer))


def _processor_class(real: type, model_type: str) -> type:
    """The real processor class, or its images-only twin where torchvision (video) is missing."""
    from projector.processors import image_only_processor_class, video_processor_available

    return real if video_processor_available() else image_only_processor_class(model_type) or real


def _llava_next() -> tuple[Any, Any]:
    """CLIP at 32 px / patch 16 (4 tokens a tile), any-resolution grids up to 64 x 64 px."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = _train_tokenizer(VOCAB_SIZE)
    grids = [[32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(
        vision_config=clip_vision_config(32, 16),
        text_config=_llama(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=grids,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=grids
        ),
        tokenizer=tokenizer,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return LlavaNextForConditionalGeneration(config), processor


def _llava_onevision() -> tuple[Any, Any]:
    """SigLIP at 32 px / patch 16, any-resolution tiles, and a Qwen2 decoder (biased q/k/v, no BOS)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = _train_tokenizer(VOCAB_SIZE, extra_special_tokens=("<video>",), add_bos=False)
    grids = [[32, 64], [64, 32], [64, 64]]
    vision = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
        vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=Qwen2Config(**decoder_args(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=grids,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    processor = _processor_class(LlavaOnevisionProcessor, "llava_onevision")(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": 32, "width": 32}, image_grid_pinpoints=grids
        ),
        tokenizer=tokenizer,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


def _idefics3() -> tuple[Any, Any]:
    """SmolVLM's architecture: a SigLIP-style tower at 32 px / patch 8, pixel shuffle by 2 (4 tokens a
    tile), images split into up to 2 x 2 tiles plus a global view, and a Llama decoder reached at
    ``model.text_model``."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    tokenizer = _train_tokenizer(VOCAB_SIZE, extra_special_tokens=IDEFICS3_TOKENS)
    tile, patch, scale = 32, 8, 2
    vision = Idefics3VisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=tile, patch_size=patch,
    )  # fmt: skip
    config = Idefics3Config(
        vision_config=vision,
        text_config=_llama(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        scale_factor=scale,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}, do_image_splitting=True
        ),
        tokenizer=tokenizer,
        image_seq_len=(tile // patch) ** 2 // scale**2,
    )
    return Idefics3ForConditionalGeneration(config), processor


def _qwen2_vl() -> tuple[Any, Any]:
    """Qwen2-VL: a ViT with 2 x 2 patch merging and a Qwen2 decoder with multimodal RoPE (M-RoPE)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    tokenizer = _train_tokenizer(
        VOCAB_SIZE,
        extra_special_tokens=("<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
        add_bos=False,
    )
    text = decoder_args(tokenizer)
    # M-RoPE: the 32 rotary frequencies of a 64-wide head split into (time, height, width) sections.
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config={"depth": 2, "embed_dim": 64, "hidden_size": HIDDEN, "num_heads": 2, "patch_size": 8,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3, "mlp_ratio": 2},
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )  # fmt: skip
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=64 * 64
    )
    processor = _processor_class(Qwen2VLProcessor, "qwen2_vl")(
        image_processor=image_processor, tokenizer=tokenizer
    )
    return Qwen2VLForConditionalGeneration(config), processor


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "idefics3": _idefics3,
    "qwen2_vl": _qwen2_vl,
}


def build_tiny_family(model_type: str, out_dir: Path, *, seed: int = 0) -> Path:
    """Build the tiny model of ``model_type`` with its processor into ``out_dir`` and return it."""
    if model_type not in BUILDERS:
        raise ValueError(f"no tiny build for {model_type!r}; built: {', '.join(BUILDERS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, processor = BUILDERS[model_type]()
    model = model.eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    recipe = {"name": f"{RECIPE_PREFIX}{RECIPE_VERSION}-{model_type}-seed{seed}", "version": RECIPE_VERSION}
    (out_dir / "aim_recipe.json").write_text(json.dumps({**recipe, "seed": seed}, indent=2))
    return out_dir


def ensure_tiny_family(model_type: str, cache_dir: Path, *, seed: int = 0) -> Path:
    """The cached build for this recipe, model type and seed, built on first use."""
    out_dir = Path(cache_dir) / f"{RECIPE_PREFIX}{RECIPE_VERSION}-{model_type}-seed{seed}"
    if not (out_dir / "aim_recipe.json").exists():
        tmp = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_family(model_type, tmp, seed=seed)
        tmp.rename(out_dir)  # a killed build never leaves a half model in the cache
    return out_dir
