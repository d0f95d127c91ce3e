"""``aim eval``: the command line mapped onto ``EvalConfig``, then ``run``; prints the results table.

aim eval --model DIR --projector CKPT --benchmark easy-vqa --n-test 200 --out runs/eval
aim eval --model DIR --projector CKPT --benchmark binding --n-test 100 --out runs/bind --record-into CKPT
aim eval --model DIR --projector CKPT --benchmark binding --shots 1,2,4 --select first,random,similar \
    --candidates 12 --out runs/select-binding
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from projector.evaluation.config import BENCHMARKS, DEFAULT_SETTINGS, SETTINGS, EvalConfig, EvaluationError
from projector.training.config import DEFAULT_MODEL_CACHE

DESCRIPTION = (
    "Few-shot evaluation and fidelity to raw multimodal ICL: zero-shot, raw ICL, AIM (trained / identity "
    "projector) (``aim eval``)."
)


def parse_args(argv: list[str] | None) -> EvalConfig:
    p = argparse.ArgumentParser(prog="aim eval", description=DESCRIPTION)
    p.add_argument(
        "--model", required=True, help="backbone: a LLaVA-family directory or hub id, 'tiny', 'aim-mini'"
    )
    p.add_argument("--projector", type=Path, default=None, help="trained projector checkpoint (for 'aim')")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=CKPT",
        help="evaluate another projector checkpoint as setting 'aim:NAME' (repeatable)",
    )
    p.add_argument("--benchmark", default="easy-vqa", choices=BENCHMARKS)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument(
        "--pool", type=int, default=64, help="training-split questions the demonstrations come from"
    )
    p.add_argument("--shots", default="0,1,2,4,8")
    p.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help=f"comma-separated, of {', '.join(SETTINGS)} (raw-icl-jpeg: raw ICL with every demonstration "
        "image JPEG re-encoded at quality 95, the teacher's agreement with itself)",
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--plain-templates",
        action="store_true",
        help="wrap demonstrations and queries as '<image>\\n{text}' instead of the model's own templates",
    )
    p.add_argument("--model-cache", type=Path, default=DEFAULT_MODEL_CACHE)
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--record-into",
        type=Path,
        default=None,
        metavar="CKPT",
        help="add this run's fidelity figures to CKPT's training.json (CKPT: --projector or an --also path); "
        "GET /ready shows them",
    )
    p.add_argument(
        "--select",
        default="first",
        help="demonstration selection policies to compare, comma-separated: first, random, similar "
        "(the server's order), similar-last, similar-first",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="demonstrations each query's policies choose from (must exceed the largest k with --select)",
    )
    return EvalConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from projector.evaluation.report import markdown_table
    from projector.evaluation.runner import run

    try:
        summary = run(parse_args(argv))
    except EvaluationError as exc:
        print(f"aim eval: error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
