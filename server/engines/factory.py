"""Choose and build the engine; shut it down when the server stops."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from projector.backbone import Backbone
from server.engines.base import Engine
from server.settings import Settings

if TYPE_CHECKING:
    from server.engines.transformers_engine import TransformersEngine
    from server.engines.vllm_engine import VllmEngine

log = logging.getLogger(__name__)

# Beyond this the embedded default would reserve KV cache nobody asked for; set AIM_MAX_MODEL_LEN.
DEFAULT_MAX_MODEL_LEN_CAP = 8192


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_engine_name(settings: Settings) -> str:
    if settings.engine == "auto":
        return "vllm" if vllm_available() else "transformers"
    if settings.engine == "vllm" and not vllm_available():
        raise RuntimeError(
            "AIM_ENGINE=vllm but vLLM is not installed: pip install 'aim-serve[gpu]' (or '[cpu]')"
        )
    return settings.engine


def resolve_max_model_len(settings: Settings, backbone: Backbone) -> int:
    if settings.max_model_len is not None:
        if settings.max_model_len > backbone.max_position_embeddings:
            raise ValueError(
                f"max_model_len {settings.max_model_len} exceeds the model's "
                f"{backbone.max_position_embeddings} positions"
            )
        return settings.max_model_len
    return min(backbone.max_position_embeddings, DEFAULT_MAX_MODEL_LEN_CAP)


def engine_class(name: str) -> type[VllmEngine] | type[TransformersEngine]:
    # Imported on demand: vLLM is optional and heavy.
    if name == "vllm":
        from server.engines.vllm_engine import VllmEngine

        return VllmEngine
    from server.engines.transformers_engine import TransformersEngine

    return TransformersEngine


@asynccontextmanager
async def build_engine(settings: Settings, backbone: Backbone) -> AsyncIterator[Engine]:
    """Every engine the same way: a cheap constructor, ``start()``, and ``shutdown()`` in ``finally``
    (also when start-up fails half-way, so nothing it spawned outlives the server)."""
    name = resolve_engine_name(settings)
    max_model_len = resolve_max_model_len(settings, backbone)
    log.info("starting %s engine (max_model_len=%d)", name, max_model_len)
    engine: Engine = engine_class(name)(settings, backbone, max_model_len=max_model_len)
    try:
        await engine.start()
        yield engine
    finally:
        await engine.shutdown()
