"""Tiny random LLaVA models with real image-token geometry, for benchmarks.

The decoder is as small as the test model (random weights, CPU-friendly), but the image side has the
real token counts, since prompt length is what the benchmark is about:

* LLaVA-1.5: CLIP at 336 px with patch 14, CLS dropped -> 24 x 24 = **576** image tokens.
* LLaVA-NeXT: the same tower with any-resolution tiling at a 672 x 672 grid -> base 576 + 2 x 2 tiles of
  576 + one newline token per feature row (48) = **2,928** image tokens (LLaVA-NeXT's "~2,880").

Both share the decoder weights, so one vLLM engine serves prompts of either setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from projector.backbone import Backbone, load_backbone
from projector.models.tiny import build_tiny_llava

IMAGE_SIZE, PATCH_SIZE = 336, 14
NEXT_GRID = 672
# The tiny decoder's RoPE has no trained length; room for the longest prompt the bench builds.
MAX_POSITIONS = 65536


def _with_max_positions(model_dir: Path, positions: int) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config["text_config"]["max_position_embeddings"] = positions
    path.write_text(json.dumps(config, indent=2))


def build_llava15_geometry(out_dir: Path, *, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    if not (out_dir / "aim_recipe.json").exists():
        build_tiny_llava(out_dir, seed=seed, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
        _with_max_positions(out_dir, MAX_POSITIONS)
        recipe = json.loads((out_dir / "aim_recipe.json").read_text())
        recipe["name"] = f"bench-llava15-geometry-seed{seed}"
        (out_dir / "aim_recipe.json").write_text(json.dumps(recipe, indent=2))
    return out_dir


def build_llava_next_geometry(out_dir: Path, llava15_dir: Path) -> Path:
    """A LLaVA-NeXT model whose vision tower, projector and decoder are the LLaVA-1.5 model's."""
    from transformers import (
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    out_dir = Path(out_dir)
    if (out_dir / "aim_recipe.json").exists():
        return out_dir
    base_config = LlavaConfig.from_pretrained(llava15_dir)
    config = LlavaNextConfig(
        vision_config=base_config.vision_config.to_dict(),
        text_config=base_config.text_config.to_dict(),
        image_token_id=base_config.image_token_id,
        image_grid_pinpoints=[[NEXT_GRID, NEXT_GRID]],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    base = LlavaForConditionalGeneration.from_pretrained(llava15_dir, dtype=torch.float32)
    torch.manual_seed(1)
    model = LlavaNextForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all("image_newline" in k for k in missing), (missing, unexpected)
    model.generation_config = base.generation_config
    model.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(llava15_dir)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=[[NEXT_GRID, NEXT_GRID]],
    )
    LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(out_dir)
    (out_dir / "aim_recipe.json").write_text(json.dumps({"name": "bench-llava-next-geometry"}, indent=2))
    return out_dir


def load_bench_backbones(cache_dir: Path) -> tuple[Backbone, Backbone]:
    """(LLaVA-1.5 geometry, LLaVA-NeXT geometry), built on first use under ``cache_dir``."""
    cache_dir = Path(cache_dir)
    v15 = build_llava15_geometry(cache_dir / "llava15-geometry")
    nxt = build_llava_next_geometry(cache_dir / "llava-next-geometry", v15)
    return (
        load_backbone(v15, dtype=torch.float32, device="cpu"),
        load_backbone(nxt, dtype=torch.float32, device="cpu"),
    )


def build_llava15_smollm2(out_dir: Path, llava15_dir: Path, *, max_positions: int = 16384) -> Path:
    """LLaVA-1.5 geometry (576 image tokens) in front of aim-mini's real decoder, SmolLM2-135M.

    The tiny model's vision tower and tokenizer (ids < its small vocabulary, a subset of SmolLM2's) with
    a randomly initialised connector into SmolLM2's width, then SmolLM2-135M-Instruct's weights as the
    decoder: the engine-side cost of a prompt is what a real 30-layer, 576-wide decoder pays. RoPE is
    given ``max_positions`` (SmolLM2's own is 8,192) so the raw k = 16 prompt (10,000 tokens) fits:
    speed only, the answers past 8,192 positions are not meaningful.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from projector.models.aim_mini.build import load_smollm2

    out_dir = Path(out_dir)
    if (out_dir / "aim_recipe.json").exists():
        return out_dir
    decoder, _ = load_smollm2(torch.float32)
    text_config = decoder.config.to_dict()
    text_config["max_position_embeddings"] = max_positions
    base_config = LlavaConfig.from_pretrained(llava15_dir)
    config = LlavaConfig(
        vision_config=base_config.vision_config.to_dict(),
        text_config=text_config,
        image_token_id=base_config.image_token_id,
        vision_feature_select_strategy=base_config.vision_feature_select_strategy,
        vision_feature_layer=base_config.vision_feature_layer,
        tie_word_embeddings=decoder.config.tie_word_embeddings,
    )
    base = LlavaForConditionalGeneration.from_pretrained(llava15_dir, dtype=torch.float32)
    torch.manual_seed(2)
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(base.model.vision_tower.state_dict())
    decoder_state = decoder.state_dict()
    model.model.language_model.load_state_dict(
        {k.removeprefix("model."): v for k, v in decoder_state.items() if k.startswith("model.")}
    )
    model.lm_head.load_state_dict({"weight": decoder_state["lm_head.weight"]})
    model.generation_config = base.generation_config
    model.save_pretrained(out_dir)
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(llava15_dir).save_pretrained(out_dir)
    recipe = json.loads((llava15_dir / "aim_recipe.json").read_text())
    recipe["name"] = "bench-llava15-geometry-smollm2-135m"
    (out_dir / "aim_recipe.json").write_text(json.dumps(recipe, indent=2))
    return out_dir
