"""The metric ``aim eval`` scores answers with: normalised exact match (SQuAD-style)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

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
