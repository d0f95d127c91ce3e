"""Can a linear map recover the demonstration's words from the backbone's hidden states?

A fused token is a linear map of a hidden state into the input-embedding space. This fits that map by
ridge regression (as ``aim train --init lstsq`` does) on training demonstrations, then asks, on the
evaluation binding task's demonstrations, how often the mapped row's nearest input embedding (cosine)
is the token that stood there: for the made-up label's tokens ("blicket") and for the rest. It
compares a fit on the training episodes alone with one that adds ``--vocabulary`` made-up-word
demonstrations (``projector.training.generic.vocabulary_pairs``), per layer and ridge.

    python -m projector.evaluation.token_recovery --model aim-mini --layers 8,15,-1 --vocabulary 600
"""

from __future__ import annotations

import argparse
import sys

import torch

from projector.backbone import Backbone, load_backbone
from projector.evaluation.tasks import binding_items
from projector.models import resolve_model
from projector.training.config import DEFAULT_MODEL_CACHE
from projector.training.episodes import Pair
from projector.training.generic import binding_episodes, generic_episodes, vocabulary_pairs


def _features(backbone: Backbone, pairs: list[Pair], labels: list[str | None], layers: list[int]):
    """Per layer, the hidden states at the text positions (``Backbone.encode_demonstrations``); the
    token ids there; which of them are pieces of the demonstration's label."""
    hidden: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    ids_out, is_label = [], []
    for start in range(0, len(pairs), 8):
        chunk = [(p.load(), p.text) for p in pairs[start : start + 8]]
        with torch.no_grad():
            for layer in layers:
                hidden[layer] += [
                    e.hidden_states.float() for e in backbone.encode_demonstrations(chunk, layer=layer)
                ]
    for pair, label in zip(pairs, labels, strict=True):
        ids = backbone.demonstration_text_ids(pair.text)
        pieces = (
            set(backbone.tokenizer(" " + label, add_special_tokens=False)["input_ids"]) if label else set()
        )
        ids_out.append(torch.tensor(ids))
        is_label.append(torch.tensor([i in pieces for i in ids], dtype=torch.bool))
    return {k: torch.cat(v) for k, v in hidden.items()}, torch.cat(ids_out), torch.cat(is_label)


def recovery(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    backbone = load_backbone(resolve_model(args.model, DEFAULT_MODEL_CACHE))
    layers = [int(x) for x in args.layers.split(",")]
    episodes = generic_episodes(args.episodes, seed=0) + binding_episodes(args.episodes, seed=0)
    train = list({d.key: d for ep in episodes for d in ep.demonstrations}.values())[: args.train_demos]
    extra = vocabulary_pairs(episodes, n=args.vocabulary)
    items = binding_items(args.items, 6, args.seed)
    test = [d for it in items for d in it.demonstrations]
    test_labels = [label for it in items for label in it.labels]
    h_train, ids_train, _ = _features(backbone, train, [None] * len(train), layers)
    h_extra, ids_extra, _ = _features(backbone, extra, [None] * len(extra), layers)
    h_test, ids_test, label = _features(backbone, test, test_labels, layers)
    emb = backbone.model.get_input_embeddings().weight.detach().float()
    unit = emb / emb.norm(dim=1, keepdim=True)
    rows = []
    for fit, hs, ids in (
        ("episodes", [h_train], [ids_train]),
        ("+ vocabulary", [h_train, h_extra], [ids_train, ids_extra]),
    ):
        for layer in layers:
            h = torch.cat([x[layer] for x in hs]).double()
            e = emb[torch.cat(ids)].double()
            h_mean, e_mean = h.mean(0), e.mean(0)
            gram = (h - h_mean).T @ (h - h_mean)
            for ridge in args.ridges:
                eye = torch.eye(gram.shape[0], dtype=gram.dtype)
                w = torch.linalg.solve(
                    gram + ridge * gram.diagonal().mean() * eye, (h - h_mean).T @ (e - e_mean)
                )
                mapped = ((h_test[layer].double() - h_mean) @ w + e_mean).float()
                right = (mapped / mapped.norm(dim=1, keepdim=True) @ unit.T).argmax(1) == ids_test
                rows.append({"fit": fit, "layer": layer, "ridge": ridge, "label": float(right[label].float().mean()),
                             "other": float(right[~label].float().mean())})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m projector.evaluation.token_recovery", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="aim-mini")
    p.add_argument("--layers", default="8,15,-1")
    p.add_argument("--ridges", type=float, nargs="+", default=[0.1, 0.001])
    p.add_argument("--episodes", type=int, default=40, help="generic and binding training episodes each")
    p.add_argument("--train-demos", type=int, default=150)
    p.add_argument("--vocabulary", type=int, default=600)
    p.add_argument("--items", type=int, default=15, help="evaluation binding items (6 demonstrations each)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    rows = recovery(p.parse_args(argv))
    print(
        "| fit | layer | ridge | label tokens recovered | other tokens recovered |\n|---|---:|---:|---:|---:|"
    )
    for r in rows:
        print(f"| {r['fit']} | {r['layer']} | {r['ridge']} | {r['label']:.3f} | {r['other']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
