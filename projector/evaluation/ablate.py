"""The projector ablation grid: train one projector per cell, measure every one in one ``aim eval`` run
per task (raw ICL, the teacher, computed once and shared), write one table.

Cells: objective (``lm``, ``kl``, ``both``, ``both+rec``: both plus ``--reconstruction``) x hidden-state
layer (``last``, ``middle``: the decoder's middle layer) x projector kind (``linear``, ``mlp``, ``residual``) x steps.

    python -m projector.evaluation.ablate --model tiny --data generic:200 --data binding:100 \\
        --out runs/ablate --steps 20 --benchmark binding --benchmark description --n-test 8 --shots 0,2,4

Writes ``ablation.md`` / ``ablation.json`` in ``--out`` (plus each cell's checkpoint under ``cells/`` and
each task's full ``aim eval`` output under ``eval-<task>/``). Runs may be resumed: a cell whose
checkpoint exists is not retrained.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

from projector.evaluation.config import BENCHMARKS, EvalConfig, EvaluationError
from projector.training.config import DEFAULT_MODEL_CACHE, TrainConfig, TrainingError
from projector.training.episodes import DataError

OBJECTIVES = ("lm", "kl", "both", "both+rec")
LAYERS = ("last", "middle")
KINDS = ("linear", "mlp", "residual")
log = logging.getLogger("aim.ablate")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m projector.evaluation.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", required=True)
    p.add_argument("--data", action="append", required=True, help="aim train --data (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--layers", default=",".join(LAYERS), help="last, middle, or layer numbers")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--steps", default="200", help="comma-separated step counts")
    p.add_argument("--reconstruction", type=float, default=0.1, help="weight used by the both+rec cells")
    p.add_argument("--benchmark", action="append", default=None, choices=BENCHMARKS, help="default: binding")
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--shots", default="0,1,2,4,8")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--init", choices=["identity", "lstsq"], default="identity")
    p.add_argument("--max-shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="backbone features and teacher, shared by cells"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plain-templates", action="store_true")
    p.add_argument("--model-cache", type=Path, default=DEFAULT_MODEL_CACHE)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for name, allowed in (("objectives", OBJECTIVES), ("kinds", KINDS)):
        bad = [v for v in _csv(getattr(args, name)) if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return args


def middle_layer(model: str, model_cache: Path) -> int:
    """The decoder's middle layer as a hidden-state index (0 is the embeddings), from the config alone."""
    from transformers import AutoConfig

    from projector.models import register_model_types, resolve_model

    register_model_types()
    config = AutoConfig.from_pretrained(resolve_model(model, model_cache))
    return int(config.get_text_config().num_hidden_layers) // 2


def run(args: argparse.Namespace) -> dict:
    from projector.evaluation.runner import run as evaluate
    from projector.training.trainer import train

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    layers = {}
    for name in _csv(args.layers):
        layers[name] = (
            -1
            if name == "last"
            else middle_layer(args.model, args.model_cache)
            if name == "middle"
            else int(name)
        )
    cells = []
    for objective, layer, kind, steps in itertools.product(_csv(args.objectives), layers, _csv(args.kinds),
                                                            [int(s) for s in _csv(args.steps)]):  # fmt: skip
        name = f"{objective}-{layer}-{kind}-{steps}"
        ckpt = out / "cells" / name
        base = objective.removesuffix("+rec")
        config = TrainConfig(model=args.model, data=args.data, out=ckpt, kind=kind, layer=layers[layer],
                             objective=base, reconstruction=args.reconstruction if objective.endswith("+rec") else 0.0,
                             init=args.init if kind == "linear" else "identity", steps=steps,
                             batch_size=args.batch_size, lr=args.lr, warmup=min(args.warmup, max(1, steps // 5)),
                             max_shots=args.max_shots, eval_every=max(1, steps), save_every=max(1, steps),
                             seed=args.seed, device=args.device, threads=args.threads, cache_dir=args.cache_dir,
                             plain_templates=args.plain_templates, model_cache=args.model_cache,
                             quiet=args.quiet)  # fmt: skip
        summary_path = ckpt / "ablation_cell.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
        else:
            log.info("training cell %s", name)
            summary = train(config)
            summary_path.write_text(json.dumps(summary, indent=2, default=str))
        cells.append({"cell": name, "objective": objective, "layer": layer, "layer_index": layers[layer],
                      "kind": kind, "steps": steps, "heldout": summary.get("final_heldout"),
                      "train_seconds": summary.get("train_seconds"), "checkpoint": str(ckpt)})  # fmt: skip
    evals = {}
    for benchmark in args.benchmark or ["binding"]:
        log.info("evaluating %d cells on %s", len(cells), benchmark)
        evals[benchmark] = evaluate(EvalConfig(
            model=args.model, out=out / f"eval-{benchmark}", benchmark=benchmark, n_test=args.n_test,
            shots=args.shots, settings="zero-shot,raw-icl,aim-identity", seed=args.seed,
            also=[f"{c['cell']}={c['checkpoint']}" for c in cells], device=args.device, threads=args.threads,
            plain_templates=args.plain_templates, model_cache=args.model_cache, quiet=args.quiet))  # fmt: skip
    result = {"model": args.model, "data": args.data, "cells": cells, "benchmarks": list(evals),
              "rows": {b: s["results"] for b, s in evals.items()}}  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "ablation.md").write_text(ablation_table(result))
    return result


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def ablation_table(result: dict) -> str:
    """One row per cell (and the reference settings), per task: the fidelity figures at every k > 0."""
    lines = [f"# Projector ablation on `{result['model']}` (data: {', '.join(result['data'])})\n"]
    for benchmark in result["benchmarks"]:
        rows = result["rows"][benchmark]
        ks = sorted({r["k"] for r in rows if r["k"] > 0})
        head = ["setting", "held-out LM", "held-out KL"]
        for k in ks:
            head += [f"acc k={k}", f"agree k={k}", f"KL k={k}", f"copy k={k}"]
        lines += [
            f"\n## {benchmark}\n",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * len(head)) + "|",
        ]
        by = {(r["setting"], r["k"]): r for r in rows}
        settings = list(dict.fromkeys(r["setting"] for r in rows if r["k"] > 0))
        heldout = {f"aim:{c['cell']}": c.get("heldout") or {} for c in result["cells"]}
        for s in settings:
            h = heldout.get(s, {})
            cells = [s.removeprefix("aim:"), _f(h.get("lm")), _f(h.get("kl"))]
            for k in ks:
                r = by.get((s, k), {})
                cells += [
                    _f(r.get("accuracy")),
                    _f(r.get("agreement")),
                    _f(r.get("kl")),
                    _f(r.get("label_copy_rate")),
                ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\nacc: task accuracy; agree: answer agreement with raw ICL; KL: mean KL(raw ‖ setting) over raw ICL's "
        "answer tokens; copy: label-copy rate. Held-out LM / KL: the cell's training run's final held-out "
        "losses (KL only for cells trained with a teacher). Full tables and paired tests: eval-<task>/results.md.\n"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        result = run(args)
    except (TrainingError, DataError, EvaluationError) as exc:
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 2
    print(ablation_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
