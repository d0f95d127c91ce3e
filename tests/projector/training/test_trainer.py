"""Projector training on the tiny random LLaVA: loss goes down, checkpoints load, resume works;
the training-data readers; an evaluation smoke run."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from projector.backbone import Backbone
from projector.projector import Projector, ProjectorMismatchError
from projector.training.episodes import (
    Episode,
    Pair,
    demo_text,
    document_episodes,
    generic_episodes,
    read_episodes_jsonl,
    read_mmc4,
    read_obelics,
)
from projector.training.trainer import FeatureCache, episode_embeds, parse_args, train
from tests.helpers import png_b64, png_bytes

COLORS = ["red", "blue", "green", "yellow"]


def write_episodes(tmp_path: Path, n: int = 40, seed: int = 0) -> Path:
    """Colour-naming episodes in both JSONL layouts; images as files and as base64."""
    rng = random.Random(seed)
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for c in COLORS:
        for shape in ("circle", "square"):
            (images / f"{c}-{shape}.png").write_bytes(png_bytes(c, shape=shape))
    lines = []
    for e in range(n):
        picks = [(rng.choice(COLORS), rng.choice(["circle", "square"])) for _ in range(3)]
        if e % 2 == 0:
            demos = [{"image": f"images/{c}-{s}.png", "text": f"Colour: {c}"} for c, s in picks[:2]]
            c, s = picks[2]
            lines.append({"demonstrations": demos, "query": {"image": png_b64(c, shape=s), "text": "Colour:"},
                          "answer": c})  # fmt: skip
        else:
            for c, s in picks[:2]:
                lines.append({"episode": f"e{e}", "image": f"images/{c}-{s}.png", "text": f"Colour: {c}"})
            c, s = picks[2]
            lines.append({"episode": f"e{e}", "image": f"data:image/png;base64,{png_b64(c, shape=s)}",
                          "text": "Colour:", "answer": c})  # fmt: skip
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_episode_jsonl_layouts(tmp_path: Path) -> None:
    episodes = read_episodes_jsonl(write_episodes(tmp_path, n=4))
    assert len(episodes) == 4
    for ep in episodes:
        assert len(ep.demonstrations) == 2
        assert all(d.text.startswith("Colour: ") and d.text.endswith("\n") for d in ep.demonstrations)
        assert ep.query.text == "Colour:" and ep.answer in COLORS
        assert ep.target == f" {ep.answer}\n"
        assert ep.query.load().size == (64, 64)  # base64 and data URL both decode
        assert ep.demonstrations[0].load().mode == "RGB"  # path relative to the JSONL


def test_web_document_readers(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "cat.png").write_bytes(png_bytes("gray"))
    (images / "dog.jpg").write_bytes(png_bytes("brown"))
    (images / "sun.png").write_bytes(png_bytes("yellow"))
    mmc4 = tmp_path / "mmc4.jsonl"
    mmc4.write_text(json.dumps({
        "text_list": ["Our cat sleeps all day.", "The weather was fine.", "The dog plays outside.", "The sun rose."],
        "image_info": [
            {"image_name": "dog.jpg", "raw_url": "http://x/dog.jpg", "matched_text_index": 2, "matched_sim": 0.3},
            {"image_name": "cat.png", "raw_url": "http://x/cat.png", "matched_text_index": 0, "matched_sim": 0.3},
            {"image_name": "missing.png", "raw_url": "http://x/m.png", "matched_text_index": 1},
            {"raw_url": "https://cdn.example/path/sun.png?s=1", "matched_text_index": 3},
        ],
    }) + "\n")  # fmt: skip
    docs = list(read_mmc4(mmc4, images))
    assert [p.text for p in docs[0]] == ["Our cat sleeps all day.", "The dog plays outside.", "The sun rose."]
    obelics = tmp_path / "obelics.jsonl"
    obelics.write_text(json.dumps({
        "images": [None, "http://x/cat.png", None, "http://x/dog.jpg", "http://x/gone.png", None],
        "texts": ["Intro text.", None, "About the cat.", None, None, "About the dog."],
    }) + "\n")  # fmt: skip
    docs = list(read_obelics(obelics, images))
    assert [(Path(str(p.image)).name, p.text) for p in docs[0]] == [("cat.png", "About the cat."),
                                                                    ("dog.jpg", "About the dog.")]  # fmt: skip
    episodes = document_episodes(docs, max_shots=4)
    assert len(episodes) == 1
    assert episodes[0].demonstrations[0].text == "About the cat.\n"
    assert episodes[0].query.text == "" and episodes[0].target == "About the dog.\n"


def test_generic_episodes_are_deterministic_and_not_easy_vqa() -> None:
    a = generic_episodes(40, seed=3, n_scenes=30, n_fashion=30)
    b = generic_episodes(40, seed=3, n_scenes=30, n_fashion=30)
    assert [(e.query.key, e.answer) for e in a] == [(e.query.key, e.answer) for e in b]
    for ep in a:
        assert 1 <= len(ep.demonstrations) <= 4
        texts = [d.text for d in ep.demonstrations] + [ep.query.text]
        for t in texts:  # the easy-VQA question families never appear
            assert (
                "what color" not in t.lower()
                and "what shape" not in t.lower()
                and "is there a" not in t.lower()
            )


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
    args = parse_args(["--model", str(tiny_model_dir), "--data", f"jsonl:{data}", "--out", str(out),
                       "--steps", "40", "--eval-every", "20", "--batch-size", "4", "--lr", "1e-2",
                       "--warmup", "5", "--heldout", "0.2", "--quiet", "--device", "cpu"])  # fmt: skip
    before = [p.detach().clone() for p in backbone.model.parameters()][:3]
    summary = train(args)
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
    common = ["--model", str(tiny_model_dir), "--data", f"jsonl:{data}", "--out", str(out), "--eval-every", "5",
              "--batch-size", "2", "--lr", "5e-3", "--warmup", "2", "--quiet", "--device", "cpu"]  # fmt: skip
    train(parse_args([*common, "--steps", "5"]))
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 5
    first = Projector.load(out).digest()
    summary = train(parse_args([*common, "--steps", "10", "--resume"]))
    assert summary["step"] == 10
    assert json.loads((out / "training_state.json").read_text())["step"] == 10
    assert Projector.load(out).digest() != first


@pytest.mark.skipif(importlib.util.find_spec("easy_vqa") is None, reason="needs the easy-vqa package")
def test_evaluation_smoke(tiny_model_dir: Path, backbone: Backbone, tmp_path: Path) -> None:
    from projector.evaluation.runner import parse_args as eval_args
    from projector.evaluation.runner import run

    ckpt = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size).save(tmp_path / "p")
    summary = run(eval_args(["--model", str(tiny_model_dir), "--projector", str(ckpt), "--n-test", "3",
                             "--pool", "4", "--shots", "0,1", "--out", str(tmp_path / "eval"), "--quiet",
                             "--device", "cpu", "--max-new-tokens", "2"]))  # fmt: skip
    rows = {(r["setting"], r["k"]): r for r in summary["results"]}
    assert set(rows) == {("zero-shot", 0), ("raw-icl", 1), ("aim", 1), ("aim-identity", 1)}
    # One demonstration costs its text tokens with AIM and text + image tokens raw.
    assert rows[("aim", 1)]["prompt_tokens"] < rows[("raw-icl", 1)]["prompt_tokens"]
    assert rows[("aim", 1)]["prompt_tokens"] > rows[("zero-shot", 0)]["prompt_tokens"]
    for name in ("results.json", "results.md", "results.png", "predictions.jsonl"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert "| AIM (trained projector) | 1 |" in (tmp_path / "eval" / "results.md").read_text()


def test_demo_text_layout() -> None:
    assert demo_text("Q: x? A:", "yes") == "Q: x? A: yes\n"
    assert demo_text("", "A caption.") == "A caption.\n"
    assert Episode((), Pair("x.png", "Caption:"), "a dog").target == " a dog\n"
