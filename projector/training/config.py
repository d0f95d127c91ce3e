"""What a projector training run is told: ``TrainConfig``, and the error a run raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DEFAULT_MODEL_CACHE = Path.home() / ".cache" / "aim-serve" / "models"


class TrainingError(ValueError):
    """The run cannot go ahead as configured (bad data spec, too few episodes, nothing to resume)."""


@dataclass
class TrainConfig:
    """Every setting of ``aim train``; ``projector.training.cli`` maps the command line onto it."""

    model: str  # backbone: a LLaVA-family directory or hub id, 'tiny', 'aim-mini'
    data: list[
        str
    ]  # generic[:N] | scenes[:N] | binding[:N] | jsonl:PATH | mmc4:… | obelics:… (see sources.py)
    out: Path  # output directory (projector checkpoint + state)
    kind: Literal["linear", "mlp", "residual"] = "linear"
    layer: int = -1  # backbone hidden-state layer (default: last)
    objective: Literal["lm", "kl", "both"] = (
        "lm"  # lm: answer cross-entropy; kl: distil raw ICL; both: lm + kl
    )
    kl_weight: float = 1.0  # objective both: weight of the KL term
    reconstruction: float = 0.0  # weight of regenerating a demonstration's text from its fused tokens
    teacher_top_k: int = 64  # teacher log-probs kept per answer token (0: the whole vocabulary)
    # reference: learn along the episode's own answer; teacher: along raw ICL's greedy answer to the
    # same prompt (sequence-level distillation: the answer `aim eval`'s agreement compares against)
    distil_on: Literal["reference", "teacher"] = "reference"
    init: Literal["identity", "lstsq"] = "identity"
    ridge: float = 0.1  # init lstsq: relative to the mean diagonal of the hidden states' Gram matrix
    init_vocabulary: int = 2000  # init lstsq: made-up-word demonstrations added to the fit's rows
    steps: int = 500
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 20
    max_shots: int = 4  # demonstrations per episode (generic/web sources)
    heldout: float = 0.05  # share of episodes held out (at least 8)
    eval_every: int = 50
    save_every: int = 50
    max_minutes: float | None = None  # stop (and save) after this much training time
    resume: bool = False  # continue from the state in ``out``
    seed: int = 0
    device: str | None = None  # default: cuda when available, else cpu
    threads: int | None = None  # CPU threads for torch
    cache_dir: Path | None = None  # keep backbone features on disk here
    plain_templates: bool = False  # '<image>\n{text}' instead of the model's own templates
    model_cache: Path = field(default_factory=lambda: DEFAULT_MODEL_CACHE)
    quiet: bool = False  # no progress bars

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        self.model_cache = Path(self.model_cache)
        if not self.data:
            raise TrainingError("no --data source")
        if self.objective not in ("lm", "kl", "both"):
            raise TrainingError(f"objective must be lm, kl or both, got {self.objective!r}")
        if self.distil_on not in ("reference", "teacher"):
            raise TrainingError(f"distil_on must be reference or teacher, got {self.distil_on!r}")
        if self.reconstruction < 0 or self.kl_weight < 0 or self.teacher_top_k < 0:
            raise TrainingError("reconstruction, kl_weight and teacher_top_k cannot be negative")
        for name in ("steps", "batch_size", "eval_every", "save_every"):
            value = getattr(self, name)
            if value < (0 if name == "steps" else 1):
                raise TrainingError(f"{name} must be positive, got {value}")
