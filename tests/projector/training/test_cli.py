"""``aim train``'s command line: every option lands in ``TrainConfig`` with its default; errors exit 2."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from projector.training.cli import main, parse_args
from projector.training.config import TrainConfig, TrainingError
from projector.training.sources import load_sources


def test_parse_args_gives_the_config_defaults() -> None:
    config = parse_args(["--model", "tiny", "--data", "generic:10", "--out", "runs/x"])
    assert config == TrainConfig(model="tiny", data=["generic:10"], out=Path("runs/x"))
    assert (config.steps, config.batch_size, config.lr, config.warmup, config.heldout) == (
        500,
        4,
        1e-3,
        20,
        0.05,
    )
    assert (config.kind, config.init, config.ridge, config.layer) == ("linear", "identity", 0.1, -1)


def test_every_config_field_has_a_flag() -> None:
    flags = parse_args(["--model", "m", "--data", "generic", "--out", "o", "--kind", "mlp", "--layer", "-2",
                        "--init", "lstsq", "--ridge", "0.5", "--init-vocabulary", "5",
                        "--objective", "both", "--kl-weight", "0.5", "--reconstruction", "0.1", "--teacher-top-k", "8",
                        "--distil-on", "teacher",
                        "--steps", "3", "--batch-size", "2", "--lr", "0.1",
                        "--weight-decay", "0.01", "--warmup", "1", "--max-shots", "2", "--heldout", "0.3",
                        "--eval-every", "7", "--save-every", "9", "--max-minutes", "1.5", "--resume", "--seed", "4",
                        "--device", "cpu", "--threads", "1", "--cache-dir", "c", "--plain-templates",
                        "--model-cache", "mc", "--quiet"])  # fmt: skip
    defaults = TrainConfig(model="m", data=["generic"], out=Path("o"))
    changed = {f.name for f in fields(TrainConfig) if getattr(flags, f.name) != getattr(defaults, f.name)}
    assert changed == {f.name for f in fields(TrainConfig)} - {"model", "data", "out"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("webdataset:x", "unknown --data source"),
        ("mmc4:docs.jsonl", "mmc4:JSONL:IMAGE_DIR expected"),
        ("generic:many", "generic\\[:N\\] expected"),
    ],
)
def test_bad_data_specs_are_training_errors(spec: str, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        load_sources([spec], seed=0, max_shots=2)


def test_main_reports_a_training_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The config is refused before any model is loaded.
    assert main(["--model", "tiny", "--data", "generic", "--out", str(tmp_path), "--steps", "-1"]) == 2
    assert "aim train: error: steps must be positive" in capsys.readouterr().err


@pytest.mark.parametrize(("spec", "warns"), [("binding:3", True), ("generic:3", True), ("scenes:3", False)])
def test_missing_fashion_mnist_is_said_for_the_sources_that_use_it(
    spec: str, warns: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the file-system check is replaced: the episodes are still generated (from shapes).
    monkeypatch.setattr("projector.training.sources.fashion_mnist_installed", lambda: False)
    with caplog.at_level("WARNING", logger="projector.training.sources"):
        episodes = load_sources([spec], seed=0, max_shots=2)
    assert len(episodes) == 3
    said = [r.getMessage() for r in caplog.records if "Fashion-MNIST is not in" in r.getMessage()]
    assert len(said) == (1 if warns else 0)
    if warns:
        assert "apt-get install dataset-fashion-mnist" in said[0]
