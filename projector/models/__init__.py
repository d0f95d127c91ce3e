"""The models this project builds itself, by name, and the transformers classes they need.

``resolve_model`` turns a built-in name into a loadable directory (built on first use);
``register_model_types`` tells transformers about the classes a built-in model's directory names.
Both are called explicitly by whoever loads a backbone: importing this package does neither.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# Projectors shipped in the repository, used when a built-in model is served without AIM_PROJECTOR.
SHIPPED_PROJECTORS = {"aim-mini": Path(__file__).resolve().parent.parent / "checkpoints" / "aim-mini-generic"}


def _ensure_tiny(models_dir: Path) -> Path:
    from projector.models.tiny import ensure_tiny_llava

    return ensure_tiny_llava(models_dir)


def _ensure_aim_mini(models_dir: Path) -> Path:
    from projector.models.aim_mini.build import ensure_aim_mini

    return ensure_aim_mini(models_dir)


def _tiny_family(model_type: str) -> Callable[[Path], Path]:
    def ensure(models_dir: Path) -> Path:
        from projector.models.tiny_family import ensure_tiny_family

        return ensure_tiny_family(model_type, models_dir)

    return ensure


BUILTIN_MODELS: dict[str, Callable[[Path], Path]] = {
    "tiny": _ensure_tiny,
    "aim-mini": _ensure_aim_mini,
    # tiny random builds of the other supported architectures, for trying the machinery on each
    "tiny-llava-next": _tiny_family("llava_next"),
    "tiny-llava-onevision": _tiny_family("llava_onevision"),
    "tiny-idefics3": _tiny_family("idefics3"),
}


def resolve_model(model: str, models_dir: Path) -> str:
    """A model directory or hub id; the built-in names are built into ``models_dir`` on first use."""
    build = BUILTIN_MODELS.get(model)
    return str(build(Path(models_dir))) if build is not None else model


def is_tiny(model: str) -> bool:
    """Whether ``model`` names a tiny random-weight test model (by name, or a directory of a tiny build).

    Reads only the directory's recipe file: callers decide before any weights load.
    """
    if model == "tiny" or model.startswith("tiny-") and model in BUILTIN_MODELS:
        return True
    from projector.models.tiny import RECIPE_PREFIX
    from projector.models.tiny_family import RECIPE_PREFIX as FAMILY_PREFIX
    from projector.templates import read_recipe

    local = Path(model)
    if not local.is_dir():
        return False
    name = read_recipe(local).get("name")
    return isinstance(name, str) and name.startswith((RECIPE_PREFIX, FAMILY_PREFIX))


def register_model_types() -> None:
    """Register the model classes of the built-in models with transformers' Auto classes (idempotent).

    aim-mini's vision tower is a class of this project; a saved aim-mini directory names it in its
    config, so ``AutoConfig`` must know it before such a directory loads.
    """
    from projector.models.aim_mini import register

    register()
