"""``aim eval --select``: the policies on hand-built embeddings, and a run on the tiny model whose
``similar`` picks are checked against a cosine ranking computed here from the backbone's own image
embeddings (the ones the server stores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from projector.backbone import Backbone
from projector.evaluation.config import EvalConfig, EvaluationError
from projector.evaluation.metrics import significance
from projector.evaluation.report import policy_comparison
from projector.evaluation.runner import run
from projector.evaluation.selection import choose, parse_policies
from projector.evaluation.tasks import TASKS
from projector.selection import SIMILAR_ORDER

# Cosine with the query [1, 0]: c0 0.0, c1 0.71, c2 1.0, c3 0.96, c4 0.89. Ranked by dot product
# instead, the long c1 (dot 5.0) would come first: only a cosine ranking gives c2, c3, c4.
CANDIDATES = torch.tensor([[0.0, 1.0], [5.0, 5.0], [0.5, 0.0], [1.0, 0.3], [1.0, 0.5]])
QUERY = torch.tensor([2.0, 0.0])


def test_similar_shows_the_highest_cosine_candidates_in_the_asked_order() -> None:
    kw = {"embeddings": CANDIDATES, "query": QUERY}
    assert choose("similar-last", 3, 5, **kw) == [4, 3, 2]  # most similar next to the query
    assert choose("similar-first", 3, 5, **kw) == [2, 3, 4]
    assert choose("similar-last", 1, 5, **kw) == choose("similar-first", 1, 5, **kw) == [2]
    assert choose("similar-last", 5, 5, **kw) == [0, 1, 4, 3, 2]
    # Equal cosines keep candidate order (deterministic), whatever their lengths.
    ties = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [2.0, 0.0]])
    assert choose("similar-first", 3, 4, embeddings=ties, query=QUERY) == [0, 2, 3]
    with pytest.raises(ValueError, match="needs the candidates' and the query's image embeddings"):
        choose("similar-last", 2, 5)


def test_first_and_random_ignore_the_images_and_random_is_seeded() -> None:
    assert choose("first", 3, 12) == [0, 1, 2]
    draws = {seed: [choose("random", 4, 12, seed=seed, item=i) for i in range(20)] for seed in (0, 1)}
    assert draws[0] == [choose("random", 4, 12, seed=0, item=i) for i in range(20)]  # reproducible
    assert draws[0] != draws[1]  # the seed matters
    assert len({tuple(d) for d in draws[0]}) > 10  # items get their own draws
    for i, picks in enumerate(draws[0]):
        assert len(set(picks)) == 4 and all(0 <= j < 12 for j in picks)
        assert (
            choose("random", 2, 12, seed=0, item=i) == picks[:2]
        )  # the k-shot draw is in the (k+1)-shot one
    assert sorted(j for d in draws[0] for j in d) != sorted(list(range(4)) * 20)  # not just the first four
    with pytest.raises(ValueError, match="cannot show 5 of 4 candidates"):
        choose("first", 5, 4)


def test_policy_names_and_configurations() -> None:
    assert parse_policies("first, similar,random") == ["first", f"similar-{SIMILAR_ORDER}", "random"]
    with pytest.raises(ValueError, match="unknown selection policies \\['nearest'\\]"):
        parse_policies("first,nearest")
    with pytest.raises(EvaluationError, match="needs --candidates larger than the largest k \\(4\\)"):
        EvalConfig(
            model="tiny", out=Path("o"), settings="raw-icl", shots="1,4", select="first,similar", candidates=4
        )
    with pytest.raises(EvaluationError, match="--select: unknown selection policies"):
        EvalConfig(model="tiny", out=Path("o"), settings="raw-icl", select="best")


def test_a_selection_run_shows_each_policy_its_own_demonstrations(
    tiny_model_dir: Path, backbone: Backbone, tmp_path: Path
) -> None:
    policies = ("first", "random", "similar-last", "similar-first")
    summary = run(EvalConfig(model=str(tiny_model_dir), benchmark="binding", n_test=2, shots="1,2", candidates=5,
                             settings="zero-shot,raw-icl,aim-identity", select=",".join(policies),
                             out=tmp_path / "eval", quiet=True, device="cpu", max_new_tokens=2))  # fmt: skip
    rows = {(r["setting"], r["select"], r["k"]) for r in summary["results"]}
    assert rows == {("zero-shot", None, k) for k in (1, 2)} | {
        (s, p, k) for s in ("raw-icl", "aim-identity") for p in policies for k in (1, 2)
    }
    chosen = {}
    for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines():
        p = json.loads(line)
        chosen[(p["setting"], p["select"], p["k"], p["item"])] = p["chosen"]
    # The items as the run built them; the ranking recomputed here from the backbone's embeddings.
    for i, item in enumerate(TASKS["binding"].build(2, 5, 0, 0)):
        demos = torch.stack([backbone.encode_demonstration(d.load(), d.text).image_embedding
                             for d in item.demonstrations])  # fmt: skip
        query = backbone.embed_query(item.query.load(), item.query.text).image_embedding
        cosine = torch.nn.functional.cosine_similarity(demos, query[None], dim=1)
        best = torch.argsort(cosine, descending=True, stable=True).tolist()
        for setting in ("raw-icl", "aim-identity"):  # every setting sees the same demonstrations
            for k in (1, 2):
                assert chosen[(setting, "similar-last", k, i)] == best[:k][::-1]
                assert chosen[(setting, "similar-first", k, i)] == best[:k]
                assert chosen[(setting, "first", k, i)] == list(range(k))
                assert chosen[(setting, "random", k, i)] == choose("random", k, 5, seed=0, item=i)
        assert chosen[("zero-shot", None, 2, i)] == []
    assert {("aim-identity", "similar-last", "aim-identity", "first")} <= {
        (t["a"], t["a_select"], t["b"], t["b_select"]) for t in summary["significance"]
    }
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "| AIM (identity projector), select=similar-first | 2 |" in md
    assert (
        "| setting | k | select | accuracy | label copy | agreement with raw ICL | p vs first (score) |" in md
    )
    table = policy_comparison([summary], "aim-identity").splitlines()
    assert table[0] == "| task (n) | k | measure | " + " | ".join(policies) + " | similar: last vs first |"
    copy = next(line for line in table if line.startswith("| binding (2) | 2 | raw ICL label copy |"))
    raw = {
        r["select"]: r["label_copy_rate"]
        for r in summary["results"]
        if r["setting"] == "raw-icl" and r["k"] == 2
    }
    assert copy.split(" | ")[3:7] == [f"{raw[p]:.2f}" for p in policies]


def test_each_policy_is_tested_against_first_and_the_similar_orders_against_each_other() -> None:
    def rec(setting: str, select: str | None, score: list[float]) -> dict:
        return {"setting": setting, "select": select, "k": 2, "score": score, "agreement": [0.0] * 4,
                "label_copy": [0.0] * 4}  # fmt: skip

    records = [rec("zero-shot", None, [0, 0, 0, 0]), rec("aim", "first", [0, 0, 0, 1]),
               rec("aim", "similar-last", [1, 1, 1, 0]), rec("aim", "similar-first", [1, 0, 0, 0])]  # fmt: skip
    tests = {(t["a_select"], t["b"], t["b_select"], t["measure"]): (t["a_only"], t["b_only"], t["p"])
             for t in significance(records, ["zero-shot", "aim"], [2], classification=True)}  # fmt: skip
    assert tests[("similar-last", "aim", "first", "score")] == (3, 1, 0.625)
    assert tests[("similar-first", "aim", "first", "score")] == (1, 1, 1.0)
    assert tests[("similar-last", "aim", "similar-first", "score")] == (2, 0, 0.5)
    assert tests[("similar-last", "zero-shot", None, "score")] == (3, 0, 0.25)  # zero-shot has no policy
    assert ("first", "aim", "similar-last", "score") not in tests  # first is the baseline, not tested
    assert len({k for k in tests if k[3] == "score"}) == 6  # 3 policies x zero-shot, 2 x first, 1 order
