"""A starting point for a linear projector better than the identity (``aim train --init lstsq``)."""

from __future__ import annotations

import torch

from projector.projector import Projector
from projector.training.config import TrainingError
from projector.training.episodes import Episode, Pair
from projector.training.features import FeatureCache


def lstsq_init(projector: Projector, episodes: list[Episode], cache: FeatureCache, *, ridge: float = 0.1,
               max_items: int = 2000, vocabulary: list[Pair] = ()) -> int:  # fmt: skip
    """Set a linear projector to the ridge-regression map from a demonstration's hidden states to the
    input embeddings of the same text tokens: fused tokens then start out close to the text itself
    (with whatever the hidden states carry about the image mixed in). Returns the rows fitted.

    The map's output lies in the span of the embeddings it was fitted on, so the rows must cover the
    tokens fused tokens should carry: ``vocabulary`` adds demonstrations beyond the episodes'
    (``generic.vocabulary_pairs``). Measured on aim-mini, last layer: fitted on the episodes alone it
    recovered 0 % of an evaluation label's tokens (nearest input embedding), with 600 made-up-word
    demonstrations added 39 % (``docs/fidelity.md``)."""
    if projector.config.kind != "linear":
        raise TrainingError("--init lstsq needs a linear projector")
    demos = list({d.key: d for ep in episodes for d in ep.demonstrations}.values())[:max_items]
    pairs = demos + list(vocabulary)
    hs, es = [], []
    for d, h in zip(pairs, cache.demonstrations(pairs), strict=True):
        try:
            es.append(cache.demonstration_text(d))
        except ValueError:  # the tokenizer and the processor disagree on this text: leave it out
            continue
        hs.append(h)
    if not hs:
        raise TrainingError("no demonstrations to fit the projector on")
    H, E = torch.cat(hs).double(), torch.cat(es).double()
    h_mean, e_mean = H.mean(0), E.mean(0)
    Hc, Ec = H - h_mean, E - e_mean
    d = H.shape[1]
    gram = Hc.T @ Hc
    lam = ridge * gram.diagonal().mean()
    W = torch.linalg.solve(gram + lam * torch.eye(d, dtype=gram.dtype), Hc.T @ Ec)  # [d_in, d_out]
    with torch.no_grad():
        projector.linear.weight.copy_(W.T.float())
        projector.linear.bias.copy_((e_mean - h_mean @ W).float())
    return int(H.shape[0])
