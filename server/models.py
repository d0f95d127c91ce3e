"""Resolve the ``model`` setting to a loadable model, and the ``dtype`` setting to a torch dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from projector import models
from server.settings import Settings


def resolve_dtype(settings: Settings) -> torch.dtype:
    if settings.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, settings.dtype)


def resolve_model(settings: Settings) -> str:
    return models.resolve_model(settings.model, Path(settings.cache_dir) / "models")
