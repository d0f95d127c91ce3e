"""Resolve the ``model`` setting to a loadable model, and the ``dtype`` setting to a torch dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from server.settings import Settings

BUILT_IN = ("tiny", "aim-mini")


def resolve_dtype(settings: Settings) -> torch.dtype:
    if settings.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, settings.dtype)


def resolve_model(settings: Settings) -> str:
    """A model directory or hub id; the built-in names are built into the cache on first use."""
    models = Path(settings.cache_dir) / "models"
    if settings.model == "tiny":
        from projector.tiny import ensure_tiny_llava

        return str(ensure_tiny_llava(models))
    if settings.model == "aim-mini":
        from projector.aim_mini.build import ensure_aim_mini

        return str(ensure_aim_mini(models))
    return settings.model
