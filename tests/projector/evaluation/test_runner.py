"""An evaluation run on the tiny model (easy-VQA questions), and its configuration errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from projector.backbone import Backbone
from projector.evaluation.cli import main, parse_args
from projector.evaluation.config import EvalConfig, EvaluationError
from projector.evaluation.runner import jpeg_round_trip, run
from projector.projector import Projector


@pytest.mark.skipif(importlib.util.find_spec("easy_vqa") is None, reason="needs the easy-vqa package")
def test_evaluation_smoke(tiny_model_dir: Path, backbone: Backbone, tmp_path: Path) -> None:
    ckpt = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size).save(tmp_path / "p")
    summary = run(EvalConfig(model=str(tiny_model_dir), projector=ckpt, n_test=3, pool=4, shots="0,1",
                             out=tmp_path / "eval", quiet=True, device="cpu", max_new_tokens=2))  # fmt: skip
    rows = {(r["setting"], r["k"]): r for r in summary["results"]}
    assert set(rows) == {("zero-shot", 0), ("zero-shot", 1), ("raw-icl", 1), ("aim", 1), ("aim-identity", 1)}
    # One demonstration costs its text tokens with AIM and text + image tokens raw.
    assert rows[("aim", 1)]["prompt_tokens"] < rows[("raw-icl", 1)]["prompt_tokens"]
    assert rows[("aim", 1)]["prompt_tokens"] > rows[("zero-shot", 0)]["prompt_tokens"]
    for name in ("results.json", "results.md", "results.png", "predictions.jsonl"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert "| AIM (trained projector) | 1 |" in (tmp_path / "eval" / "results.md").read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"settings": "aim,few-shot"}, "unknown settings \\['few-shot'\\]"),
        ({"settings": "aim"}, "setting 'aim' needs --projector"),
        ({"also": ["nocheckpoint"]}, "--also NAME=CKPT expected"),
        ({"benchmark": "vqav2"}, "unknown benchmark 'vqav2'"),
        ({"shots": "1,two"}, "--shots takes comma-separated whole numbers"),
        ({"settings": "aim-identity", "record_into": "p"}, "--record-into needs the raw-icl setting"),
    ],
)
def test_bad_configurations_are_evaluation_errors(overrides: dict, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        EvalConfig(model="tiny", out=Path("out"), **{"settings": "zero-shot", **overrides})


def test_the_command_line_maps_onto_the_config_and_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert parse_args(["--model", "tiny", "--out", "o", "--projector", "p"]) == EvalConfig(
        model="tiny", out=Path("o"), projector=Path("p")
    )
    assert main(["--model", "tiny", "--out", str(tmp_path), "--settings", "aim"]) == 2
    assert "aim eval: error: setting 'aim' needs --projector" in capsys.readouterr().err


def test_binding_fidelity_against_raw_icl_is_recorded_into_the_checkpoint(
    tiny_model_dir: Path, backbone: Backbone, tmp_path: Path
) -> None:
    ckpt = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size).save(tmp_path / "p")
    before = Projector.load(ckpt).digest()
    summary = run(EvalConfig(model=str(tiny_model_dir), projector=ckpt, benchmark="binding", n_test=3, shots="0,3",
                             out=tmp_path / "eval", quiet=True, device="cpu", record_into=ckpt))  # fmt: skip
    rows = {(r["setting"], r["k"]): r for r in summary["results"]}
    raw, aim, identity = rows[("raw-icl", 3)], rows[("aim", 3)], rows[("aim-identity", 3)]
    assert (raw["agreement"], raw["kl"]) == (1.0, 0.0)
    assert aim["kl"] > 0 and aim["kl"] == identity["kl"]  # the same projector twice measures the same
    assert 0 <= aim["label_copy_rate"] <= 1 and 0 <= aim["first_token_agreement"] <= 1
    assert {(t["a"], t["b"], t["measure"]) for t in summary["significance"]} >= {
        ("aim", "raw-icl", "score"),
        ("aim", "aim-identity", "agreement"),
        ("aim", "zero-shot", "label_copy"),
    }
    recorded = Projector.load(ckpt).provenance["fidelity"]["binding/seed0/n3"]
    assert recorded["setting"] == "aim" and recorded["by_k"]["3"]["kl"] == aim["kl"]
    assert Projector.load(ckpt).digest() == before
    assert "| raw multimodal ICL | 3 |" in (tmp_path / "eval" / "results.md").read_text()


def test_record_into_must_be_an_evaluated_checkpoint(
    tiny_model_dir: Path, backbone: Backbone, tmp_path: Path
):
    ckpt = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size).save(tmp_path / "p")
    with pytest.raises(EvaluationError, match="not a checkpoint this run evaluates"):
        run(EvalConfig(model=str(tiny_model_dir), projector=ckpt, benchmark="binding", n_test=1, shots="1",
                       out=tmp_path / "e", quiet=True, device="cpu", record_into=tmp_path / "other"))  # fmt: skip


def test_raw_icl_jpeg_is_the_teacher_measured_against_itself(
    tiny_model_dir: Path, backbone: Backbone, tmp_path: Path
) -> None:
    ckpt = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size).save(tmp_path / "p")
    summary = run(EvalConfig(model=str(tiny_model_dir), projector=ckpt, benchmark="binding", n_test=3, shots="2",
                             settings="raw-icl,raw-icl-jpeg,aim", out=tmp_path / "eval", quiet=True, device="cpu",
                             record_into=ckpt))  # fmt: skip
    rows = {r["setting"]: r for r in summary["results"]}
    jpeg = rows["raw-icl-jpeg"]
    # Measured against raw ICL like a student, on prompts of raw ICL's length (the same images, other pixels).
    assert jpeg["kl"] > 0 and jpeg["agreement"] is not None
    assert jpeg["prompt_tokens"] == rows["raw-icl"]["prompt_tokens"]
    assert ("aim", "raw-icl-jpeg", "agreement") in {
        (t["a"], t["b"], t["measure"]) for t in summary["significance"]
    }
    recorded = Projector.load(ckpt).provenance["fidelity"]["binding/seed0/n3"]["by_k"]["2"]
    assert recorded["raw_icl_self_agreement"] == jpeg["agreement"]
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| raw multimodal ICL, demonstrations re-encoded as JPEG | 2 |" in table


def test_jpeg_round_trip_keeps_the_picture_and_changes_the_pixels() -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (48, 48), (240, 230, 200))
    ImageDraw.Draw(image).ellipse((10, 10, 38, 38), fill=(200, 30, 30))
    again = jpeg_round_trip(image)
    assert (again.size, again.mode) == (image.size, image.mode)
    mse = ((np.asarray(image, dtype=float) - np.asarray(again, dtype=float)) ** 2).mean()
    assert mse > 0 and 10 * np.log10(255**2 / mse) > 30  # PSNR above 30 dB: other pixels, the same picture
