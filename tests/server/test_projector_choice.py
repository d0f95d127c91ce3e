"""No silent identity projector: a model that is not tiny needs a trained projector or the explicit
``AIM_PROJECTOR=identity``; a checkpoint's provenance (``training.json``) shows in ``GET /ready`` and
never changes the bank fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from projector.projector import Projector, read_provenance, record_fidelity, write_provenance
from server.app import ProjectorRequiredError, bank_fingerprint, choose_projector, load_encoder
from server.cli import main as aim_main
from server.settings import Settings
from tests.helpers import make_settings, start_app


@pytest.fixture(scope="module")
def other_llava_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LLaVA directory that is not the tiny test model: the tiny weights under another recipe name."""
    out = tmp_path_factory.mktemp("models") / "my-llava"
    shutil.copytree(tiny_model_dir, out)
    recipe = json.loads((out / "aim_recipe.json").read_text())
    (out / "aim_recipe.json").write_text(json.dumps({**recipe, "name": "my-llava"}))
    return out


def test_a_model_without_a_trained_projector_is_refused(other_llava_dir: Path, tmp_path: Path) -> None:
    settings = Settings(model=str(other_llava_dir), cache_dir=tmp_path)
    with pytest.raises(ProjectorRequiredError) as refused:
        load_encoder(settings)
    message = str(refused.value)
    assert "aim train --model" in message and "AIM_PROJECTOR=identity" in message


def test_aim_serve_refuses_before_loading_anything(
    other_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("AIM_PROJECTOR", raising=False)
    monkeypatch.setenv("AIM_CACHE_DIR", str(tmp_path))
    assert aim_main(["serve", "--model", str(other_llava_dir)]) == 2
    err = capsys.readouterr().err
    assert "has no trained AIM projector" in err and "AIM_PROJECTOR=identity" in err


def test_identity_is_an_explicit_opt_in_and_tiny_keeps_it_silently(
    other_llava_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    encoder = load_encoder(Settings(model=str(other_llava_dir), projector="identity", cache_dir=tmp_path))
    identity = Projector.identity(backbone="my-llava", hidden_size=encoder.backbone.hidden_size)
    assert encoder.backbone.name == "my-llava" and encoder.projector.digest() == identity.digest()
    assert choose_projector(Settings(model=str(tiny_model_dir))) is None
    assert choose_projector(Settings(model="tiny")) is None
    assert choose_projector(Settings(model="aim-mini")) is not None  # its shipped projector


def test_provenance_never_changes_the_fingerprint(other_llava_dir: Path, tmp_path: Path) -> None:
    ckpt = Projector.identity(backbone="my-llava", hidden_size=128).save(tmp_path / "p")
    settings = Settings(model=str(other_llava_dir), projector=ckpt, cache_dir=tmp_path)
    before = bank_fingerprint(load_encoder(settings))
    write_provenance(ckpt, {"objective": "kl", "steps": 3})
    record_fidelity(ckpt, "binding/seed0", {"label_copy_rate": {"4": 0.5}})
    encoder = load_encoder(settings)
    assert encoder.projector.provenance == read_provenance(ckpt)
    assert encoder.projector.provenance["fidelity"]["binding/seed0"]["label_copy_rate"] == {"4": 0.5}
    assert bank_fingerprint(encoder) == before


async def test_ready_shows_how_the_projector_was_trained(tiny_model_dir: Path, tmp_path: Path) -> None:
    from projector.backbone import load_backbone

    name = load_backbone(tiny_model_dir).name
    ckpt = Projector.identity(backbone=name, hidden_size=128).save(tmp_path / "p")
    write_provenance(ckpt, {"objective": "both", "data": ["generic:100"], "steps": 7})
    record_fidelity(ckpt, "binding/seed0", {"agreement": {"4": 0.75}})
    async for running in start_app(make_settings(tiny_model_dir, tmp_path, projector=ckpt)):
        ready = (await running.client.get("/ready")).json()
    projector = ready["projector"]
    assert projector["checkpoint"] == str(ckpt) and projector["trained"] and projector["kind"] == "linear"
    assert projector["provenance"]["objective"] == "both" and projector["provenance"]["steps"] == 7
    assert projector["provenance"]["fidelity"]["binding/seed0"]["agreement"]["4"] == 0.75
