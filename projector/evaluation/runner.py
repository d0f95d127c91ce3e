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
demonstration images included) plus generation. AIM prompts are built exactly as the server builds
them: fused tokens and query embeddings from ``projector.encoder.AimEncoder`` (in the backbone's
dtype), laid out by ``projector.prompt.assemble_prompt`` (``aim_prompt`` below). Reports accuracy
(normalised exact match), mean prompt tokens and mean latency per (setting, k) as ``results.json``,
``results.md`` and ``results.png`` in ``--out`` (``projector.evaluation.report``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from projector.backbone import Backbone, load_backbone
from projector.encoder import AimEncoder
from projector.evaluation.config import EvalConfig
from projector.evaluation.metrics import exact_match
from projector.evaluation.report import markdown_table, plot
from projector.models import resolve_model
from projector.projector import Projector
from projector.prompt import assemble_prompt
from projector.templates import Templates
from projector.training.episodes import demo_text, first_line, load_image

log = logging.getLogger("aim.eval")


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
    """A benchmark split as items (``EvalConfig`` has already checked ``name``)."""
    from projector.models.aim_mini.data import load_questions

    return [
        Item(q.image, _question_prompt(q.question), q.answer, q.qtype, f"{split}/{i}")
        for i, q in enumerate(load_questions(split))
    ]


def newline_token_ids(tokenizer) -> list[int]:
    """Every token whose text contains a newline: generation stops at the end of the answer line."""
    vocab = tokenizer.get_vocab()
    ids = []
    for token, idx in vocab.items():
        text = tokenizer.convert_tokens_to_string([token])
        if "\n" in text:
            ids.append(idx)
    return sorted(ids)


def encode_pool(encoder: AimEncoder, demonstrations: Sequence[tuple[Image.Image, str]]) -> list[torch.Tensor]:
    """Each demonstration's fused tokens, as the server's bank holds them."""
    return [encoder.encode_demonstration(image, text).fused_tokens for image, text in demonstrations]


def aim_prompt(
    encoder: AimEncoder, image: Image.Image | None, prompt: str, fused_tokens: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The AIM prompt for a query after the given demonstrations' fused tokens (none: zero-shot)."""
    return assemble_prompt(encoder.embed_query(image, prompt), fused_tokens)


class Evaluator:
    def __init__(self, backbone: Backbone, *, max_new_tokens: int = 6) -> None:
        self.backbone = backbone
        self.max_new_tokens = max_new_tokens
        self.stop_ids = sorted(set(backbone.eos_token_ids) | set(newline_token_ids(backbone.tokenizer)))
        self.pad_id = backbone.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = backbone.eos_token_ids[0]
        self._images: dict[Path, object] = {}

    def image(self, path: Path) -> Image.Image:
        if path not in self._images:
            self._images[path] = load_image(path)
        return self._images[path]

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


def run(config: EvalConfig) -> dict:
    """Evaluate every (setting, k) as configured; writes the results to ``config.out`` and returns them."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    templates = Templates() if config.plain_templates else None  # None: the model's own (aim_recipe.json)
    backbone = load_backbone(
        resolve_model(config.model, config.model_cache), device=device, templates=templates
    )
    settings = config.setting_names
    shots = config.shot_counts
    projectors: dict[str, Projector] = {}
    if "aim" in settings:
        projectors["aim"] = Projector.load(
            config.projector, backbone=backbone.name, hidden_size=backbone.hidden_size
        )
    identity = Projector.identity(
        backbone=backbone.name,
        hidden_size=backbone.hidden_size,
        layer=projectors["aim"].config.layer if "aim" in projectors else -1,
    )
    if "aim-identity" in settings:
        projectors["aim-identity"] = identity
    for spec in config.also:
        name, _, path = spec.partition("=")
        projectors[f"aim:{name}"] = Projector.load(
            Path(path), backbone=backbone.name, hidden_size=backbone.hidden_size
        )
        settings.append(f"aim:{name}")
    # One encoder per projector, in the backbone's dtype: the server's read path, nothing else.
    encoders = {name: AimEncoder(backbone, p, dtype=backbone.dtype) for name, p in projectors.items()}
    query_encoder = AimEncoder(backbone, identity, dtype=backbone.dtype)  # queries do not use the projector

    rng = random.Random(config.seed)
    test_all = load_benchmark(config.benchmark, "test")
    train_all = load_benchmark(config.benchmark, "train")
    tests = rng.sample(test_all, min(config.n_test, len(test_all)))
    pool = rng.sample(train_all, min(config.pool, len(train_all)))
    max_k = max(shots)
    demo_idx = [
        random.Random(config.seed * 100_003 + i).sample(range(len(pool)), max_k) for i in range(len(tests))
    ]
    ev = Evaluator(backbone, max_new_tokens=config.max_new_tokens)

    # Fused tokens per pool item and projector: the bank's job, done before anything is timed.
    fused: dict[str, list[torch.Tensor]] = {}
    encode_seconds: dict[str, float] = {}
    if max_k > 0:
        pool_pairs = [(ev.image(item.image), demo_text(item.prompt, item.answer)) for item in pool]
        for name, encoder in encoders.items():
            t0 = time.perf_counter()
            fused[name] = encode_pool(encoder, pool_pairs)
            encode_seconds[name] = time.perf_counter() - t0
            log.info(
                "%s: fused tokens for %d pool demonstrations in %.1f s", name, len(pool), encode_seconds[name]
            )

    answers = [t.answer for t in tests]
    majority = max(set(answers), key=answers.count)
    out: Path = config.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}

    def write(partial: bool) -> None:
        summary.update({
            "benchmark": config.benchmark,
            "backbone": backbone.name,
            "projector": str(config.projector) if config.projector else None,
            "device": str(backbone.device),
            "n_test": len(tests),
            "pool": len(pool),
            "seed": config.seed,
            "shots": shots,
            "max_new_tokens": config.max_new_tokens,
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
        for i, item in enumerate(tqdm(tests, desc=f"{setting} k={k}", disable=config.quiet, mininterval=5.0)):
            demos = [pool[j] for j in demo_idx[i][:k]]
            image = ev.image(item.image)
            t0 = time.perf_counter()
            if setting == "zero-shot":
                embeds = aim_prompt(query_encoder, image, item.prompt, [])
            elif setting == "raw-icl":
                q = backbone.raw_prompt_embeds(
                    [(ev.image(d.image), demo_text(d.prompt, d.answer)) for d in demos], image, item.prompt
                )
                embeds = assemble_prompt(q, [])
            else:
                embeds = aim_prompt(
                    encoders[setting], image, item.prompt, [fused[setting][j] for j in demo_idx[i][:k]]
                )
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
