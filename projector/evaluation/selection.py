"""Demonstration selection policies for ``aim eval --select``: which k of a query's candidates it shows.

Every test item comes with ``--candidates`` demonstrations (its task's own, built as for any k: binding
cycles through the episode's three classes, easy-VQA draws from the training pool, description renders
fresh scenes). A policy picks k of them, in prompt order:

- ``first``: the first k, what ``aim eval`` shows without ``--select`` (and the server's ``"first"``);
- ``random``: k drawn without replacement, seeded per (seed, item): a fixed permutation of the
  candidates whose first k are shown, so the k-shot draw is part of the (k+1)-shot one, as for ``first``;
- ``similar-last`` / ``similar-first``: the k candidates whose image embedding is closest (cosine) to
  the query's, ranked by ``projector.selection.rank_by_similarity`` (the server's ranking) and ordered
  with the most similar last (next to the query) or first. ``similar`` names the server's order
  (``projector.selection.SIMILAR_ORDER``).

The embeddings are the ones the server stores and ranks by: a demonstration's comes out of
``AimEncoder.encode_demonstration``, a query's out of ``AimEncoder.embed_query``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from projector.selection import SIMILAR_ORDER, normalise_rows, prompt_order, rank_by_similarity

if TYPE_CHECKING:
    from projector.evaluation.tasks import EvalItem

POLICIES = ("first", "random", "similar-last", "similar-first")
BASELINE = "first"  # what every other policy is tested against


def parse_policies(spec: str) -> list[str]:
    """``"first,similar"`` -> ``["first", "similar-last"]``; raises ``ValueError`` naming unknown ones."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    names = [f"similar-{SIMILAR_ORDER}" if s == "similar" else s for s in names]
    bad = [s for s in names if s not in POLICIES]
    if bad or not names:
        raise ValueError(f"unknown selection policies {bad}; choose from similar, {', '.join(POLICIES)}")
    return list(dict.fromkeys(names))


def needs_embeddings(policies: Sequence[str]) -> bool:
    return any(p.startswith("similar") for p in policies)


def choose(
    policy: str,
    k: int,
    candidates: int,
    *,
    seed: int = 0,
    item: int = 0,
    embeddings: torch.Tensor | None = None,
    query: torch.Tensor | None = None,
) -> list[int]:
    """Indices (into the item's candidates) of the k demonstrations ``policy`` shows, in prompt order.

    ``embeddings`` (``[candidates, d]``) and ``query`` (``[d]``) are the image embeddings the
    ``similar-*`` policies rank by."""
    if not 0 <= k <= candidates:
        raise ValueError(f"cannot show {k} of {candidates} candidates")
    if policy == "first":
        return list(range(k))
    if policy == "random":
        return random.Random(f"select-random/{seed}/{item}").sample(range(candidates), candidates)[:k]
    if policy in ("similar-last", "similar-first"):
        if embeddings is None or query is None:
            raise ValueError(f"{policy!r} needs the candidates' and the query's image embeddings")
        ranked = rank_by_similarity(normalise_rows(embeddings), query, k)
        return prompt_order(ranked, "last" if policy == "similar-last" else "first")
    raise ValueError(f"unknown selection policy {policy!r}")


def select_demonstrations(
    items: Sequence[EvalItem],
    policies: Sequence[str],
    shots: Sequence[int],
    candidates: int,
    seed: int,
    image_embeddings: Mapping[str, torch.Tensor | None],
    query_embedding: Callable[[EvalItem], torch.Tensor | None],
) -> dict[tuple[str, int], list[list[int]]]:
    """For each (policy, k): per item, the indices of the demonstrations shown, in prompt order.

    ``image_embeddings`` maps a demonstration's key to its image embedding; ``query_embedding`` gives
    a query's (computed only when a ``similar-*`` policy asks for it)."""
    picks: dict[tuple[str, int], list[list[int]]] = {(p, k): [] for p in policies for k in shots}
    for i, item in enumerate(items):
        matrix = query = None
        if needs_embeddings(policies):
            rows = [image_embeddings.get(d.key) for d in item.demonstrations[:candidates]]
            query = query_embedding(item)
            if query is None or any(r is None for r in rows):
                raise ValueError(f"item {i}: 'similar' needs an image with the query and every candidate")
            matrix = torch.stack([r for r in rows if r is not None])
        for policy in policies:
            for k in shots:
                picks[(policy, k)].append(
                    choose(policy, k, candidates, seed=seed, item=i, embeddings=matrix, query=query)
                )
    return picks
