"""What ``aim eval`` scores with: normalised exact match and unigram F1 (SQuAD-style), the label-copy
rate, the exact sign test for paired comparisons, and which pairs of settings a run compares."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

from projector.evaluation.selection import BASELINE

# What each AIM setting is tested against. raw-icl-jpeg's agreement with raw ICL is the teacher's own: AIM's
# set beside it asks whether the student disagrees with raw ICL more than raw ICL does with itself.
AIM_BASELINES = ("raw-icl", "zero-shot", "aim-identity", "raw-icl-jpeg")

# -- normalised exact match (SQuAD-style) ---------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(" " if c in _PUNCT else c for c in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in refs))


def token_f1(prediction: str, reference: str) -> float:
    """Unigram F1 of the normalised words (SQuAD's F1): partial credit for a partly right description."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum(min(pred.count(w), ref.count(w)) for w in set(pred))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_label_copy(prediction: str, labels: Sequence[str]) -> bool:
    """The answer is one of the demonstrations' labels (after normalisation)."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(label) for label in labels)


def sign_test(a_only: int, b_only: int) -> float:
    """Exact two-sided sign test on the discordant pairs (McNemar's exact test for paired 0/1 outcomes):
    the chance of a split at least this lopsided if either side were equally likely to win a pair."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """(items where a scored higher, items where b did, sign-test p) for per-item scores of one item set."""
    if len(a) != len(b):
        raise ValueError(f"paired scores of different lengths: {len(a)} and {len(b)}")
    a_only = sum(x > y for x, y in zip(a, b, strict=True))
    b_only = sum(y > x for x, y in zip(a, b, strict=True))
    return a_only, b_only, sign_test(a_only, b_only)


def significance(
    records: list[dict], settings: Sequence[str], shots: Sequence[int], classification: bool
) -> list[dict]:
    """Paired sign tests, per k: each AIM setting against raw ICL, zero-shot and the identity projector
    under the same selection policy; each setting under each policy against itself under ``first``; and
    (k > 1) under ``similar-last`` against ``similar-first``.
    On per-item task score, on agreement with raw ICL and (closed tasks) on label copying."""
    by = {(r["setting"], r.get("select"), r["k"]): r for r in records}
    measures = ["score", "agreement"] + (["label_copy"] if classification else [])
    policies = list(dict.fromkeys(r.get("select") for r in records if r.get("select") is not None))
    pairs = []  # ((setting, select), (setting, select)) at one k
    for k in shots:
        if k == 0:
            continue
        for select in policies:
            for a in settings:
                if not a.startswith("aim") or (a, select, k) not in by:
                    continue
                for b in AIM_BASELINES:
                    b_select = None if b == "zero-shot" else select  # zero-shot shows no demonstrations
                    if b != a and (b, b_select, k) in by:
                        pairs.append((k, (a, select), (b, b_select)))
        for select in policies:
            for a in settings:
                if select != BASELINE and (a, select, k) in by and (a, BASELINE, k) in by:
                    pairs.append((k, (a, select), (a, BASELINE)))
        for a in settings:  # the order of similar demonstrations: most similar last against first
            if k > 1 and (a, "similar-last", k) in by and (a, "similar-first", k) in by:
                pairs.append((k, (a, "similar-last"), (a, "similar-first")))
    tests = []
    for k, (a, a_select), (b, b_select) in pairs:
        for measure in measures:
            if measure == "agreement" and "raw-icl" in (a, b):
                continue  # raw ICL agrees with itself
            x, y = by[(a, a_select, k)][measure], by[(b, b_select, k)][measure]
            a_only, b_only, p = paired([float(v) for v in x], [float(v) for v in y])
            tests.append({"k": k, "a": a, "a_select": a_select, "b": b, "b_select": b_select,
                          "measure": measure, "a_only": a_only, "b_only": b_only, "p": p})  # fmt: skip
    return tests
