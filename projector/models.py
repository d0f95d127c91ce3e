"""Model names that this project builds itself, resolved to loadable directories."""

from __future__ import annotations

from pathlib import Path

# Projectors shipped in the repository, used when a built-in model is served without AIM_PROJECTOR.
SHIPPED_PROJECTORS = {"aim-mini": Path(__file__).resolve().parent / "checkpoints" / "aim-mini-generic"}


def resolve_model(model: str, models_dir: Path) -> str:
    """A model directory or hub id; the built-in names are built into ``models_dir`` on first use."""
    if model == "tiny":
        from projector.tiny import ensure_tiny_llava

        return str(ensure_tiny_llava(models_dir))
    if model == "aim-mini":
        from projector.aim_mini.build import ensure_aim_mini

        return str(ensure_aim_mini(models_dir))
    return model
