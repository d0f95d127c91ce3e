"""Demonstrations ranked by how much their images look like the query's: the one ranking that the
server's per-query selection (``bank.selection``) and ``aim eval``'s selection policies both call, so
what is measured is what is served.

The vectors compared are ``projector.backbone.image_embedding``: the mean of an image's features as
the model splices them into the decoder's input, computed for a demonstration at registration and
for a query while its embeddings are built. Similarity is the cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Order = Literal["last", "first"]
# Where the most similar demonstration goes in the prompt: last (next to the query) or first. Measured
# with ``aim eval --select`` on aim-mini (docs/eval_selection.md): "last" was significantly better for
# raw ICL on binding (0.96 against 0.74 at k = 4) and neither order was significantly better elsewhere.
SIMILAR_ORDER: Order = "last"


def normalise_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """``[n, d]`` float32 rows of unit length (a zero row stays zero): cosine becomes a dot product,
    so an index normalises once and every query costs one matrix-vector product."""
    return torch.nn.functional.normalize(embeddings.float(), dim=1)


def rank_by_similarity(
    matrix: torch.Tensor, query: torch.Tensor, k: int, usable: torch.Tensor | None = None
) -> list[int]:
    """Row indices of the ``k`` rows of ``matrix`` (``[n, d]``, rows normalised by ``normalise_rows``)
    most similar to ``query`` (``[d]``), most similar first. Ties keep row order (deterministic); rows
    where ``usable`` is false (no embedding) rank after every usable row."""
    q = torch.nn.functional.normalize(query.float().flatten(), dim=0)
    if q.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"query embedding has {q.shape[0]} dimensions, the candidates' have {matrix.shape[1]}"
        )
    scores = matrix @ q
    if usable is not None:
        scores[~usable] = float("-inf")
    return torch.sort(scores, descending=True, stable=True).indices[:k].tolist()


def prompt_order(ranked: Sequence[int], order: Order = SIMILAR_ORDER) -> list[int]:
    """The ranked (most similar first) demonstrations in prompt order."""
    if order not in ("last", "first"):
        raise ValueError(f"order must be 'last' or 'first', got {order!r}")
    return list(reversed(ranked)) if order == "last" else list(ranked)
