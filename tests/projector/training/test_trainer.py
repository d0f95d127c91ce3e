"""Projector training on the tiny random LLaVA: episodes label only their target, loss goes down,
checkpoints load, resume works, configuration errors are exceptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from projector.backbone import Backbone
from projector.projector import Projector, ProjectorMismatchError
from projector.training.config import TrainConfig, TrainingError
from projector.training.episodes import read_episodes_jsonl
from projector.training.features import FeatureCache
from projector.training.trainer import episode_embeds, train
from tests.helpers import write_episodes


def test_episode_embeds_label_only_the_target(backbone: Backbone, tmp_path: Path) -> None:
    ep = read_episodes_jsonl(write_episodes(tmp_path, n=2))[0]
    cache = FeatureCache(backbone)
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    embeds, labels = episode_embeds(ep, projector, cache, backbone.device)
    q = backbone.embed_query(ep.query.load(), ep.query.text)
    demo_rows = [backbone.encode_demonstration(d.load(), d.text).hidden_states for d in ep.demonstrations]
    ids = backbone.tokenizer(ep.target, add_special_tokens=False)["input_ids"]
    assert embeds.shape[0] == q.num_tokens + sum(h.shape[0] for h in demo_rows) + len(ids)
    assert labels[-len(ids) :].tolist() == ids and (labels[: -len(ids)] == -100).all()
    # identity projector: the fused rows are the cached hidden states, equal to the inference path's
    start = q.prefix.shape[0]
    assert torch.allclose(embeds[start : start + demo_rows[0].shape[0]], demo_rows[0])


def test_training_lowers_heldout_loss_and_saves_a_loadable_checkpoint(
    tiny_model_dir: Path, backbone: Backbone, tmp_path: Path
) -> None:
    data = write_episodes(tmp_path)
    out = tmp_path / "run"
    config = TrainConfig(model=str(tiny_model_dir), data=[f"jsonl:{data}"], out=out, steps=40, eval_every=20,
                         batch_size=4, lr=1e-2, warmup=5, heldout=0.2, quiet=True, device="cpu")  # fmt: skip
    before = [p.detach().clone() for p in backbone.model.parameters()][:3]
    summary = train(config)
    assert summary["step"] == 40
    assert summary["final_heldout_loss"] < summary["initial_heldout_loss"] - 0.5, summary
    loaded = Projector.load(out, backbone=backbone.name, hidden_size=backbone.hidden_size)
    assert loaded.config.backbone == backbone.name and loaded.config.kind == "linear"
    assert not torch.allclose(loaded.linear.weight, torch.eye(backbone.hidden_size))  # it learned
    best = Projector.load(out / "best", backbone=backbone.name, hidden_size=backbone.hidden_size)
    assert best.digest() == loaded.digest()  # the last held-out loss was the lowest here
    with pytest.raises(ProjectorMismatchError):
        Projector.load(out, backbone="some-other-backbone", hidden_size=backbone.hidden_size)
    with pytest.raises(ProjectorMismatchError):
        Projector.load(out, backbone=backbone.name, hidden_size=backbone.hidden_size * 2)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "heldout_loss" in e] == [0, 20, 40]
    assert all(torch.equal(a, b) for a, b in zip(before, list(backbone.model.parameters())[:3], strict=True))


def test_resume_continues_from_the_saved_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_episodes(tmp_path, n=20)
    out = tmp_path / "run"
    common = dict(model=str(tiny_model_dir), data=[f"jsonl:{data}"], out=out, eval_every=5, batch_size=2,
                  lr=5e-3, warmup=2, quiet=True, device="cpu")  # fmt: skip
    train(TrainConfig(**common, steps=5))
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 5
    first = Projector.load(out).digest()
    summary = train(TrainConfig(**common, steps=10, resume=True))
    assert summary["step"] == 10
    assert json.loads((out / "training_state.json").read_text())["step"] == 10
    assert Projector.load(out).digest() != first


def test_too_few_episodes_and_a_missing_resume_state_are_training_errors(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = write_episodes(tmp_path, n=6)
    common = dict(model=str(tiny_model_dir), data=[f"jsonl:{data}"], quiet=True, device="cpu")
    with pytest.raises(TrainingError, match="only 6 episodes"):
        train(TrainConfig(**common, out=tmp_path / "few"))
    data = write_episodes(tmp_path, n=12)
    with pytest.raises(TrainingError, match="--resume: no training_state.json"):
        train(TrainConfig(**common, out=tmp_path / "fresh", resume=True))
