"""``aim train``: the command line mapped onto ``TrainConfig``, then ``train``.

aim train --model DIR --data generic:2000 --data binding:500 --objective kl --kind residual --out runs/p1
aim train --model DIR --data generic:2000 --data binding:500 --objective both --reconstruction 0.1 --out runs/p3
aim train --model DIR --data jsonl:episodes.jsonl --data mmc4:docs.jsonl:images/ --out runs/p2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from projector.training.config import DEFAULT_MODEL_CACHE, TrainConfig, TrainingError
from projector.training.episodes import DataError

DESCRIPTION = "Train an AIM projector on a frozen backbone (``aim train``)."


def parse_args(argv: list[str] | None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="aim train", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--model", required=True, help="backbone: a LLaVA-family directory or hub id, 'tiny', 'aim-mini'"
    )
    p.add_argument("--data", action="append", required=True,
                   help="generic[:N] | scenes[:N] | binding[:N] | jsonl:PATH | mmc4:PATH:IMAGE_DIR | "
                        "obelics:PATH:IMAGE_DIR (repeatable)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output directory (projector checkpoint + state)")
    p.add_argument("--kind", choices=["linear", "mlp", "residual"], default="linear")
    p.add_argument("--layer", type=int, default=-1, help="backbone hidden-state layer (default: last)")
    p.add_argument("--objective", choices=["lm", "kl", "both"], default="lm",
                   help="lm: cross-entropy on the answer; kl: distil the raw-ICL teacher's next-token "
                        "distributions over the answer (teacher-forced); both: lm + --kl-weight * kl")  # fmt: skip
    p.add_argument("--kl-weight", type=float, default=1.0, help="--objective both: weight of the KL term")
    p.add_argument(
        "--reconstruction",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="add WEIGHT x the loss of regenerating a demonstration's text from its fused tokens",
    )
    p.add_argument("--teacher-top-k", type=int, default=64,
                   help="teacher log-probs cached per answer token (0: the whole vocabulary)")  # fmt: skip
    p.add_argument("--distil-on", choices=["reference", "teacher"], default="reference",
                   help="the answer the loss is taken along: the episode's own (reference) or the raw-ICL "
                        "teacher's greedy answer to the same prompt (teacher: sequence-level "
                        "distillation, which aims at agreeing with raw ICL)")  # fmt: skip
    p.add_argument("--init", choices=["identity", "lstsq"], default="identity",
                   help="identity (the design's default) or a ridge fit of hidden states to the same tokens' "
                        "input embeddings (linear only)")  # fmt: skip
    p.add_argument(
        "--ridge",
        type=float,
        default=0.1,
        help="--init lstsq: ridge strength, relative to the mean diagonal of the hidden states' Gram matrix",
    )
    p.add_argument(
        "--init-vocabulary",
        type=int,
        default=2000,
        metavar="N",
        help="--init lstsq: add N demonstrations naming the episodes' images with made-up words, so the "
        "map covers subword tokens the episodes never use (0: the episodes alone)",
    )
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument(
        "--max-shots", type=int, default=4, help="demonstrations per episode (generic/web sources)"
    )
    p.add_argument("--heldout", type=float, default=0.05, help="share of episodes held out (at least 8)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop (and save) after this much training time"
    )
    p.add_argument("--resume", action="store_true", help="continue from the state in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--cache-dir", type=Path, default=None, help="keep backbone features on disk here")
    p.add_argument(
        "--plain-templates",
        action="store_true",
        help="wrap demonstrations and queries as '<image>\\n{text}' instead of the model's own templates",
    )
    p.add_argument("--model-cache", type=Path, default=DEFAULT_MODEL_CACHE)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return TrainConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from projector.training.trainer import train

    try:
        train(parse_args(argv))
    except (TrainingError, DataError) as exc:
        print(f"aim train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
