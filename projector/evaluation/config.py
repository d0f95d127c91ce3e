"""What an evaluation run is told: ``EvalConfig``, and the error a run raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from projector.training.config import DEFAULT_MODEL_CACHE

DEFAULT_SETTINGS = ("zero-shot", "raw-icl", "aim", "aim-identity")
# raw-icl-jpeg: the teacher against itself, its demonstration images saved again as JPEG
# (projector.evaluation.runner); it costs another raw ICL pass, the dearest setting, so it is asked for by name.
SETTINGS = (*DEFAULT_SETTINGS, "raw-icl-jpeg")
BENCHMARKS = ("binding", "easy-vqa", "description")  # projector.evaluation.tasks.TASKS


class EvaluationError(ValueError):
    """The run cannot go ahead as configured (unknown setting or benchmark, missing checkpoint)."""


@dataclass
class EvalConfig:
    """Every setting of ``aim eval``; ``projector.evaluation.cli`` maps the command line onto it."""

    model: str  # backbone: a LLaVA-family directory or hub id, 'tiny', 'aim-mini'
    out: Path
    projector: Path | None = None  # trained projector checkpoint (for 'aim')
    also: list[str] = field(default_factory=list)  # NAME=CKPT: another projector as setting 'aim:NAME'
    benchmark: str = "easy-vqa"
    n_test: int = 200
    pool: int = 64  # training-split questions the demonstrations come from
    shots: str = "0,1,2,4,8"
    settings: str = ",".join(DEFAULT_SETTINGS)
    max_new_tokens: int | None = None  # none: the task's own (binding 4, easy-vqa 6, description 24)
    seed: int = 0
    device: str | None = None
    threads: int | None = None
    plain_templates: bool = False  # '<image>\n{text}' instead of the model's own templates
    model_cache: Path = field(default_factory=lambda: DEFAULT_MODEL_CACHE)
    quiet: bool = False
    record_into: Path | None = None  # write the fidelity figures into this checkpoint's training.json
    # Selection policies compared (projector.evaluation.selection) and each query's candidates they choose
    # from (0: the largest k, i.e. nothing to choose).
    select: str = "first"
    candidates: int = 0

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.model_cache = Path(self.model_cache)
        if self.projector is not None:
            self.projector = Path(self.projector)
        if self.record_into is not None:
            self.record_into = Path(self.record_into)
            if "raw-icl" not in self.setting_names:
                raise EvaluationError(
                    "--record-into needs the raw-icl setting (the teacher fidelity is measured against)"
                )
        if self.benchmark not in BENCHMARKS:
            raise EvaluationError(
                f"unknown benchmark {self.benchmark!r} (available: {', '.join(BENCHMARKS)})"
            )
        bad = [s for s in self.setting_names if s not in SETTINGS]
        if bad:
            raise EvaluationError(f"unknown settings {bad}; choose from {', '.join(SETTINGS)}")
        if "aim" in self.setting_names and self.projector is None:
            raise EvaluationError("setting 'aim' needs --projector")
        for spec in self.also:
            name, _, path = spec.partition("=")
            if not name or not path:
                raise EvaluationError(f"--also NAME=CKPT expected, got {spec!r}")
        try:
            _ = self.shot_counts
        except ValueError:
            raise EvaluationError(
                f"--shots takes comma-separated whole numbers, got {self.shots!r}"
            ) from None

        from projector.evaluation.selection import BASELINE, parse_policies

        try:
            policies = parse_policies(self.select)
        except ValueError as exc:
            raise EvaluationError(f"--select: {exc}") from None
        if policies != [BASELINE] and self.candidates <= max(self.shot_counts):
            raise EvaluationError(
                f"--select {self.select} needs --candidates larger than the largest k "
                f"({max(self.shot_counts)}): with no more candidates than shown, every policy shows the same ones"
            )
        if self.record_into is not None and policies != [BASELINE]:
            raise EvaluationError("--record-into records the 'first' policy only; run it without --select")

    @property
    def policies(self) -> list[str]:
        from projector.evaluation.selection import parse_policies

        return parse_policies(self.select)

    @property
    def setting_names(self) -> list[str]:
        return [s.strip() for s in self.settings.split(",") if s.strip()]

    @property
    def shot_counts(self) -> list[int]:
        return sorted({int(k) for k in self.shots.split(",")})
