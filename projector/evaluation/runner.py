"""Few-shot evaluation: zero-shot, raw multimodal ICL, AIM (trained / untrained projector) (``aim eval``).

For each k in ``--shots`` and each setting, every test question gets the same k demonstrations
(drawn per question, with a fixed seed, from a pool of training-split examples; the k-shot set is a
prefix of the (k+1)-shot one), and the model answers greedily with transformers'
``generate(inputs_embeds=...)`` (no HTTP server):

- ``zero-shot``: ``[query prefix] + [query body]`` (k does not apply; reported once, at k = 0);
- ``raw-icl``: the ordinary multimodal few-shot prompt: every demonstration with its own image,
  then the query, embedded by the model's own forward (``Backbone.raw_prompt_embeds``);
- ``aim``: ``[query prefix] + fused tokens of each demonstration + [query body]`` with the trained
  projector (``--projector``);
- ``aim-identity``: the same with the untrained, identity-initialised projector.

Fused tokens depend only on (backbone, projector, demonstration), so, as in the server's bank,
they are computed once per pool item before timing; a setting's latency is the per-question time
to build its prompt embeddings (query embedding; for raw ICL the whole interleaved prompt,
demonstration images included) plus generation. Reports accuracy (normalised exact match), mean
prompt tokens and mean latency per (setting, k) as ``results.json``, ``results.md`` and
``results.png`` in ``--out``.

    aim eval --model DIR --projector CKPT --benchmark easy-vqa --n-test 200 --out runs/eval
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from projector.backbone import Backbone, load_backbone
from projector.evaluation.metrics import exact_match, load_easy_vqa
from projector.projector import Projector
from projector.prompt import assemble_prompt
from projector.templates import Templates
from projector.training.episodes import demo_text, first_line, load_image

log = logging.getLogger("aim.eval")
SETTINGS = ("zero-shot", "raw-icl", "aim", "aim-identity")
LABELS = {
    "zero-shot": "zero-shot",
    "raw-icl": "raw multimodal ICL",
    "aim": "AIM (trained projector)",
    "aim-identity": "AIM (identity projector)",
}


@dataclass(frozen=True)
class Item:
    image: Path
    prompt: str  # the query text, which the answer follows
    answer: str
    qtype: str
    key: str


def _question_prompt(question: str) -> str:
    question = question.strip()
    return f"Question: {question[:1].upper()}{question[1:]} Answer:"


def load_benchmark(name: str, split: str) -> list[Item]:
    if name == "easy-vqa":
        return [
            Item(e.image, _question_prompt(e.question), e.answer, e.qtype, f"{split}/{i}")
            for i, e in enumerate(load_easy_vqa(split))
        ]
    raise SystemExit(f"unknown benchmark {name!r} (available: easy-vqa)")


def newline_token_ids(tokenizer) -> list[int]:
    """Every token whose text contains a newline: generation stops at the end of the answer line."""
    vocab = tokenizer.get_vocab()
    ids = []
    for token, idx in vocab.items():
        text = tokenizer.convert_tokens_to_string([token])
        if "\n" in text:
            ids.append(idx)
    return sorted(ids)


class Evaluator:
    def __init__(self, backbone: Backbone, *, max_new_tokens: int = 6) -> None:
        self.backbone = backbone
        self.max_new_tokens = max_new_tokens
        self.stop_ids = sorted(set(backbone.eos_token_ids) | set(newline_token_ids(backbone.tokenizer)))
        self.pad_id = backbone.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = backbone.eos_token_ids[0]
        self._images: dict[Path, object] = {}
        self._hidden: dict[str, torch.Tensor] = {}

    def image(self, path: Path):
        if path not in self._images:
            self._images[path] = load_image(path)
        return self._images[path]

    def hidden_states(self, item: Item, layer: int) -> torch.Tensor:
        key = f"{item.key}@{layer}"
        if key not in self._hidden:
            enc = self.backbone.encode_demonstration(self.image(item.image), demo_text(item.prompt, item.answer),
                                                     layer=layer)  # fmt: skip
            self._hidden[key] = enc.hidden_states
        return self._hidden[key]

    @torch.inference_mode()
    def generate(self, embeds: torch.Tensor) -> str:
        model = self.backbone.model
        embeds = embeds.to(model.device, model.dtype)[None]
        out = model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=model.device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=self.stop_ids,
            # An answer must start with a word: a newline or EOS first would end it empty.
            begin_suppress_tokens=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        return self.backbone.tokenizer.decode(out[0], skip_special_tokens=True)


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from projector.models import resolve_model

    templates = Templates() if args.plain_templates else None  # None: the model's own (aim_recipe.json)
    backbone = load_backbone(resolve_model(args.model, args.model_cache), device=device, templates=templates)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise SystemExit(f"unknown settings {bad}; choose from {', '.join(SETTINGS)}")
    shots = sorted({int(k) for k in args.shots.split(",")})
    projectors: dict[str, Projector] = {}
    if "aim" in settings:
        if args.projector is None:
            raise SystemExit("setting 'aim' needs --projector")
        projectors["aim"] = Projector.load(
            args.projector, backbone=backbone.name, hidden_size=backbone.hidden_size
        )
    if "aim-identity" in settings:
        layer = projectors["aim"].config.layer if "aim" in projectors else -1
        projectors["aim-identity"] = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size,
                                                        layer=layer)  # fmt: skip
    for spec in args.also:
        name, _, path = spec.partition("=")
        if not name or not path:
            raise SystemExit(f"--also NAME=CKPT expected, got {spec!r}")
        projectors[f"aim:{name}"] = Projector.load(
            Path(path), backbone=backbone.name, hidden_size=backbone.hidden_size
        )
        settings.append(f"aim:{name}")
    for p in projectors.values():
        p.to(backbone.device).eval()

    rng = random.Random(args.seed)
    test_all = load_benchmark(args.benchmark, "test")
    train_all = load_benchmark(args.benchmark, "train")
    tests = rng.sample(test_all, min(args.n_test, len(test_all)))
    pool = rng.sample(train_all, min(args.pool, len(train_all)))
    max_k = max(shots)
    demo_idx = [
        random.Random(args.seed * 100_003 + i).sample(range(len(pool)), max_k) for i in range(len(tests))
    ]
    ev = Evaluator(backbone, max_new_tokens=args.max_new_tokens)

    # Fused tokens per pool item and projector: the bank's job, done before anything is timed.
    fused: dict[str, list[torch.Tensor]] = {}
    encode_seconds: dict[str, float] = {}
    if max_k > 0:
        for name, proj in projectors.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                fused[name] = [proj(ev.hidden_states(item, proj.config.layer)) for item in pool]
            encode_seconds[name] = time.perf_counter() - t0
            log.info(
                "%s: fused tokens for %d pool demonstrations in %.1f s", name, len(pool), encode_seconds[name]
            )

    answers = [t.answer for t in tests]
    majority = max(set(answers), key=answers.count)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}

    def write(partial: bool) -> None:
        summary.update({
            "benchmark": args.benchmark,
            "backbone": backbone.name,
            "projector": str(args.projector) if args.projector else None,
            "device": str(backbone.device),
            "n_test": len(tests),
            "pool": len(pool),
            "seed": args.seed,
            "shots": shots,
            "max_new_tokens": args.max_new_tokens,
            "majority_answer": majority,
            "majority_accuracy": answers.count(majority) / len(answers),
            "fused_encode_seconds_per_demo": {k: v / max(1, len(pool)) for k, v in encode_seconds.items()},
            "partial": partial,
            "results": results,
        })  # fmt: skip
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (out / "predictions.jsonl").open("w") as f:
            for p in predictions:
                f.write(json.dumps(p) + "\n")
        (out / "results.md").write_text(markdown_table(summary))

    from tqdm import tqdm

    runs = [("zero-shot", 0)] if "zero-shot" in settings or 0 in shots else []
    runs += [(s, k) for k in shots if k > 0 for s in settings if s != "zero-shot"]
    results, predictions = [], []
    for setting, k in runs:
        correct, tokens, seconds = [], [], []
        by_type: dict[str, list[float]] = defaultdict(list)
        for i, item in enumerate(tqdm(tests, desc=f"{setting} k={k}", disable=args.quiet, mininterval=5.0)):
            demos = [pool[j] for j in demo_idx[i][:k]]
            image = ev.image(item.image)
            t0 = time.perf_counter()
            if setting == "zero-shot":
                embeds = assemble_prompt(backbone.embed_query(image, item.prompt), [])
            elif setting == "raw-icl":
                q = backbone.raw_prompt_embeds(
                    [(ev.image(d.image), demo_text(d.prompt, d.answer)) for d in demos], image, item.prompt
                )
                embeds = assemble_prompt(q, [])
            else:
                q = backbone.embed_query(image, item.prompt)
                parts = [fused[setting][j] for j in demo_idx[i][:k]]
                embeds = assemble_prompt(q, [p.to(q.body.dtype) for p in parts])
            text = ev.generate(embeds)
            seconds.append(time.perf_counter() - t0)
            pred = first_line(text)
            score = exact_match(pred, item.answer)
            correct.append(score)
            by_type[item.qtype].append(score)
            tokens.append(int(embeds.shape[0]))
            predictions.append({"setting": setting, "k": k, "question": item.prompt, "answer": item.answer,
                                "prediction": pred, "raw": text, "correct": score})  # fmt: skip
        row = {
            "setting": setting,
            "k": k,
            "n": len(tests),
            "accuracy": sum(correct) / len(correct),
            "prompt_tokens": sum(tokens) / len(tokens),
            "latency_ms": 1000 * sum(seconds) / len(seconds),
            "by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
        }
        results.append(row)
        write(partial=True)
        log.info("%s k=%d: accuracy %.3f, %.0f prompt tokens, %.0f ms", setting, k, row["accuracy"],
                 row["prompt_tokens"], row["latency_ms"])  # fmt: skip

    write(partial=False)
    plot(summary, out / "results.png")
    return summary


def markdown_table(summary: dict) -> str:
    types = sorted({t for r in summary["results"] for t in r["by_type"]})
    head = ["setting", "k", "accuracy", *[f"acc. {t}" for t in types], "prompt tokens", "latency (ms)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in summary["results"]:
        cells = [LABELS.get(r["setting"], f"AIM ({r['setting'][4:]})"), str(r["k"]), f"{r['accuracy']:.3f}",
                 *[f"{r['by_type'].get(t, float('nan')):.3f}" for t in types],
                 f"{r['prompt_tokens']:.1f}", f"{r['latency_ms']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\n{summary['benchmark']} test, {summary['n_test']} questions (seed {summary['seed']}), demonstrations "
        f"from a pool of {summary['pool']} training questions; backbone `{summary['backbone']}` on "
        f"{summary['device']}; normalised exact match on the first generated line; majority answer "
        f"'{summary['majority_answer']}' scores {summary['majority_accuracy']:.3f}.\n"
    )
    return "\n".join(lines) + "\n" + note


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["results"]
    zero = next((r for r in rows if r["setting"] == "zero-shot"), None)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for setting in dict.fromkeys(r["setting"] for r in rows if r["setting"] != "zero-shot"):
        pts = sorted((r["k"], r["accuracy"], r["prompt_tokens"]) for r in rows if r["setting"] == setting)
        if not pts:
            continue
        if zero is not None:
            pts = [(0, zero["accuracy"], zero["prompt_tokens"]), *pts]
        ks, acc, tok = zip(*pts, strict=True)
        label = LABELS.get(setting, f"AIM ({setting[4:]})")
        ax1.plot(ks, acc, marker="o", label=label)
        ax2.plot(ks, tok, marker="o", label=label)
    if zero is not None:
        ax1.axhline(zero["accuracy"], color="gray", linestyle="--", label="zero-shot")
    ax1.axhline(summary["majority_accuracy"], color="lightgray", linestyle=":", label="majority answer")
    ax1.set_xlabel("demonstrations (k)")
    ax1.set_ylabel("accuracy (normalised exact match)")
    ax1.set_title(f"{summary['benchmark']} ({summary['n_test']} test questions)")
    top = max([summary["majority_accuracy"], *[r["accuracy"] for r in rows]])
    ax1.set_ylim(-0.02, min(1.05, top + 0.25))
    ax1.legend(fontsize=8, loc="upper left", ncol=2)
    ax2.set_xlabel("demonstrations (k)")
    ax2.set_ylabel("mean prompt tokens")
    ax2.set_title(f"prompt length, backbone {summary['backbone']}")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(summary["shots"])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aim eval", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--benchmark", default="easy-vqa", choices=["easy-vqa"])
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument(
        "--pool", type=int, default=64, help="training-split questions the demonstrations come from"
    )
    p.add_argument("--shots", default="0,1,2,4,8")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--max-new-tokens", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--plain-templates",
        action="store_true",
        help="wrap demonstrations and queries as '<image>\\n{text}' instead of the model's own templates",
    )
    p.add_argument("--model-cache", type=Path, default=Path.home() / ".cache" / "aim-serve" / "models")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    summary = run(parse_args(argv))
    print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
