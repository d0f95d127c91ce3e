"""Distillation from raw ICL: the teacher is exactly ``aim eval``'s raw-ICL prompt, its cached top-k KL is
the full KL's lower bound (equal at full vocabulary), sequence-level distillation learns along the
answer ``aim eval``'s raw-ICL setting gives, and training on it lowers the held-out KL and records how
the projector was made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from projector.backbone import Backbone
from projector.evaluation.fidelity import answer_logits, kl_divergence
from projector.evaluation.runner import Evaluator
from projector.projector import Projector, read_provenance
from projector.prompt import assemble_prompt
from projector.training.config import TrainConfig
from projector.training.distill import TeacherAnswers, TeacherCache, topk_kl
from projector.training.episodes import first_line, read_episodes_jsonl, target_text
from projector.training.features import FeatureCache
from projector.training.trainer import Objective, batch_losses, train
from tests.helpers import write_episodes


def test_the_teacher_is_the_raw_icl_prompt_and_topk_kl_bounds_the_full_kl(backbone: Backbone, tmp_path: Path):
    ep = read_episodes_jsonl(write_episodes(tmp_path, n=2))[0]
    features = FeatureCache(backbone)
    ids, logp = TeacherCache(features, top_k=0).get(ep)
    raw = backbone.raw_prompt_embeds(
        [(d.load(), d.text) for d in ep.demonstrations], ep.query.load(), ep.query.text
    )
    target_ids = features.target(ep.target)[0]
    expected = answer_logits(backbone, assemble_prompt(raw, []), target_ids)
    assert torch.allclose(logp, torch.log_softmax(expected, -1), atol=1e-5)

    student = torch.randn_like(expected)
    full = topk_kl(student, ids, logp).mean()
    assert float(full) == pytest.approx(kl_divergence(expected, student), rel=1e-4)
    top_ids, top_logp = TeacherCache(features, top_k=8, cache_dir=tmp_path / "c").get(ep)
    assert top_ids.shape == (target_ids.numel(), 8)
    coarse = topk_kl(student, top_ids, top_logp)
    assert (coarse <= topk_kl(student, ids, logp) + 1e-5).all() and (coarse >= -1e-6).all()
    assert float(topk_kl(expected, top_ids, top_logp).abs().max()) < 1e-4  # the teacher against itself
    # cached on disk: a fresh cache reads the same tensors
    again = TeacherCache(FeatureCache(backbone), top_k=8, cache_dir=tmp_path / "c").get(ep)
    assert torch.equal(again[0], top_ids) and torch.equal(again[1], top_logp)


def test_objectives_combine_their_parts(backbone: Backbone, tmp_path: Path) -> None:
    eps = read_episodes_jsonl(write_episodes(tmp_path, n=4))[:2]
    features = FeatureCache(backbone)
    teacher = TeacherCache(features, top_k=16)
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    with torch.no_grad():
        both = batch_losses(eps, projector, features, backbone, Objective("both", 0.5, 0.2, teacher))
        kl = batch_losses(eps, projector, features, backbone, Objective("kl", teacher=teacher))
    assert set(both) == {"lm", "kl", "reconstruction", "loss"}
    assert float(both["loss"]) == pytest.approx(
        float(both["lm"] + 0.5 * both["kl"] + 0.2 * both["reconstruction"])
    )
    assert float(kl["loss"]) == pytest.approx(float(kl["kl"])) and float(kl["kl"]) > 0


def test_kl_training_lowers_the_heldout_kl_and_records_its_provenance(tiny_model_dir: Path, tmp_path: Path):
    data = write_episodes(tmp_path, n=24)
    out = tmp_path / "run"
    summary = train(TrainConfig(model=str(tiny_model_dir), data=[f"jsonl:{data}"], out=out, steps=20, eval_every=10,
                                batch_size=4, lr=1e-2, warmup=3, heldout=0.3, quiet=True, device="cpu",
                                objective="kl", reconstruction=0.1, teacher_top_k=32))  # fmt: skip
    assert summary["final_heldout"]["kl"] < summary["initial_heldout"]["kl"] - 0.2, summary
    provenance = read_provenance(out)
    assert (
        provenance["objective"] == "kl" and provenance["reconstruction"] == 0.1 and provenance["steps"] == 20
    )
    assert provenance["data"] == [f"jsonl:{data}"] and provenance["backbone"]["name"].startswith("tiny-llava")
    assert provenance["heldout"]["kl"] == summary["final_heldout"]["kl"]
    assert read_provenance(out / "best")["objective"] == "kl"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all("heldout_kl" in e for e in log if "heldout_loss" in e)
    assert Projector.load(out).provenance == provenance


def test_sequence_level_distillation_relabels_episodes_with_raw_icls_own_answer(
    backbone: Backbone, tmp_path: Path
):
    eps = read_episodes_jsonl(write_episodes(tmp_path, n=4))
    relabelled = TeacherAnswers(backbone, cache_dir=tmp_path / "c").relabel(eps, progress=False)
    evaluator = Evaluator(backbone)  # what `aim eval` generates for the raw-ICL setting
    for ep, new in zip(eps, relabelled, strict=True):
        raw = backbone.raw_prompt_embeds([(d.load(), d.text) for d in ep.demonstrations], ep.query.load(),
                                         ep.query.text)  # fmt: skip
        budget = (
            len(backbone.tokenizer(ep.target, add_special_tokens=False)["input_ids"]) + TeacherAnswers.SLACK
        )
        expected = first_line(evaluator.generate(assemble_prompt(raw, []), max_new_tokens=budget).text)
        assert new.answer == (expected or ep.answer)
        assert new.target == target_text(ep.query.text, new.answer)
        assert (new.demonstrations, new.query) == (ep.demonstrations, ep.query)
    assert any(new.answer != ep.answer for ep, new in zip(eps, relabelled, strict=True))  # a random model
    # cached on disk: a fresh instance answers from the file, with no generator to call
    fresh = TeacherAnswers(backbone, cache_dir=tmp_path / "c")
    fresh.generator = None
    assert fresh.relabel(eps, progress=False) == relabelled


def test_training_along_the_teachers_answers_records_it(tiny_model_dir: Path, tmp_path: Path):
    data = write_episodes(tmp_path, n=12)
    out = tmp_path / "run"
    train(TrainConfig(model=str(tiny_model_dir), data=[f"jsonl:{data}"], out=out, steps=2, eval_every=1,
                      batch_size=2, heldout=0.3, quiet=True, device="cpu", objective="kl", distil_on="teacher",
                      cache_dir=tmp_path / "cache"))  # fmt: skip
    assert read_provenance(out)["distil_on"] == "teacher"
    assert len(list((tmp_path / "cache").glob("*/teacher/answers.json"))) == 1
