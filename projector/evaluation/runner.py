"""Few-shot evaluation and fidelity: zero-shot, raw multimodal ICL, AIM (trained / identity) (``aim eval``).

For each k in ``--shots`` and each setting, every test item gets the same k demonstrations (its
task's first k: the k-shot set is a prefix of the (k+1)-shot one; ``projector.evaluation.tasks``; with
``--select``, the k that each selection policy picks from the item's ``--candidates``, every setting
seeing the same ones: ``projector.evaluation.selection``), and the model answers greedily with
transformers' ``generate(inputs_embeds=...)`` (no HTTP server):

- ``zero-shot``: ``[query prefix] + [query body]``; the same answer at every k, reported at every k so
  its fidelity and label-copy rate are a baseline (what ignoring the demonstrations gives);
- ``raw-icl``: the ordinary multimodal few-shot prompt: every demonstration with its own image,
  then the query, embedded by the model's own forward (``Backbone.raw_prompt_embeds``): the teacher;
- ``aim``: ``[query prefix] + fused tokens of each demonstration + [query body]`` with the trained
  projector (``--projector``); ``aim:NAME`` the same with ``--also NAME=CKPT``;
- ``aim-identity``: the same with the untrained, identity-initialised projector;
- ``raw-icl-jpeg`` (asked for by name): raw ICL with every demonstration image saved again as JPEG at
  quality 95 (``JPEG_QUALITY``), what happens to a photo each time it is uploaded or saved: the same
  picture, other pixels. Its agreement with raw ICL is the teacher's agreement with itself, the level
  a student's agreement can be read against.

Per (setting, k): task accuracy (normalised exact match, or unigram F1 for open-ended tasks), and,
against raw ICL at the same k (``projector.evaluation.fidelity``): answer agreement (normalised
exact match with raw ICL's answer), first-answer-token top-1 agreement and mean KL(raw ‖ setting)
over the answer tokens, teacher-forced on raw ICL's own greedy answer; the label-copy rate (the
answer is one of the shown demonstrations' labels) for closed tasks; mean prompt tokens and latency.
Paired sign tests compare settings item by item, and each selection policy with ``first``. Fused
tokens depend only on (backbone, projector, demonstration), so, as in the server's bank, they are
computed once per demonstration before timing; a setting's latency is the per-item time to build its
prompt embeddings (for raw ICL the whole interleaved prompt, demonstration images included) plus
generation. AIM prompts are built exactly as the server builds them: fused tokens and query
embeddings from ``projector.encoder.AimEncoder`` (in the backbone's dtype), laid out by
``projector.prompt.assemble_prompt`` (``aim_prompt`` below). Writes ``results.json``,
``results.md``, ``results.png`` and ``predictions.jsonl`` to ``--out``
(``projector.evaluation.report``); ``--record-into CKPT`` adds the fidelity figures to the
checkpoint's ``training.json``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image

from projector.backbone import Backbone, load_backbone
from projector.encoder import AimEncoder
from projector.evaluation.config import EvalConfig, EvaluationError
from projector.evaluation.fidelity import answer_logits, first_token_agrees, kl_divergence
from projector.evaluation.metrics import exact_match, is_label_copy, normalize_answer, significance, token_f1
from projector.evaluation.report import markdown_table, plot
from projector.evaluation.selection import BASELINE, needs_embeddings, select_demonstrations
from projector.evaluation.tasks import TASKS, EvalItem, check_split
from projector.generation import AnswerGenerator, Generation
from projector.images import decode_image
from projector.models import resolve_model
from projector.projector import Projector, record_fidelity
from projector.prompt import assemble_prompt
from projector.templates import Templates
from projector.training.episodes import Pair, first_line, load_image

log = logging.getLogger("aim.eval")

# raw-icl-jpeg: Pillow's standard JPEG (4:2:0 chroma) at a high quality; on the binding images it keeps a
# PSNR of 29-36 dB, where the artefacts are hard to see.
JPEG_QUALITY = 95


def jpeg_round_trip(image: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    """The image after one JPEG encode and decode: the same picture, not the same pixels."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return decode_image(buffer.getvalue())


def encode_pool(encoder: AimEncoder, demonstrations: Sequence[tuple[Image.Image, str]]) -> list[torch.Tensor]:
    """Each demonstration's fused tokens, as the server's bank holds them."""
    return [encoder.encode_demonstration(image, text).fused_tokens for image, text in demonstrations]


def aim_prompt(
    encoder: AimEncoder, image: Image.Image | None, prompt: str, fused_tokens: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The AIM prompt for a query after the given demonstrations' fused tokens (none: zero-shot)."""
    return assemble_prompt(encoder.embed_query(image, prompt, few_shot=bool(fused_tokens)), fused_tokens)


class Evaluator(AnswerGenerator):
    """The greedy decoding evaluation scores, and each image decoded once per run."""

    def __init__(self, backbone: Backbone, *, max_new_tokens: int = 6) -> None:
        super().__init__(backbone, max_new_tokens=max_new_tokens)
        self._images: dict[tuple[str, bool], Image.Image] = {}

    def image(self, source: Path | Pair, *, jpeg: bool = False) -> Image.Image:
        """A demonstration's or query's image (``jpeg``: after ``jpeg_round_trip``), decoded once per run."""
        key = (source.key if isinstance(source, Pair) else str(source), jpeg)
        if key not in self._images:
            if jpeg:
                self._images[key] = jpeg_round_trip(self.image(source))
            else:
                self._images[key] = source.load() if isinstance(source, Pair) else load_image(source)
        return self._images[key]


# -- one run --------------------------------------------------------------------------------------


def _score(task_scoring: str, prediction: str, reference: str) -> float:
    return (
        token_f1(prediction, reference) if task_scoring == "overlap" else exact_match(prediction, reference)
    )


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def fidelity_figures(summary: dict, setting: str) -> dict:
    """What ``--record-into`` writes for one setting: per k, its fidelity and accuracy beside raw ICL's."""
    rows = {(r["setting"], r["k"]): r for r in summary["results"] if r.get("select") in (None, BASELINE)}
    per_k = {}
    for k in summary["shots"]:
        row = rows.get((setting, k))
        if row is None or k == 0:
            continue
        raw = rows.get(("raw-icl", k), {})
        per_k[str(k)] = {name: row.get(name) for name in
                         ("accuracy", "agreement", "first_token_agreement", "kl", "label_copy_rate")}  # fmt: skip
        per_k[str(k)]["raw_icl_accuracy"] = raw.get("accuracy")
        per_k[str(k)]["raw_icl_label_copy_rate"] = raw.get("label_copy_rate")
        if ("raw-icl-jpeg", k) in rows:  # what agreement the teacher keeps with itself
            per_k[str(k)]["raw_icl_self_agreement"] = rows[("raw-icl-jpeg", k)]["agreement"]
    return {
        "benchmark": summary["benchmark"],
        "backbone": summary["backbone"],
        "n": summary["n_test"],
        "seed": summary["seed"],
        "setting": setting,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by_k": per_k,
    }


def run(config: EvalConfig) -> dict:
    """Evaluate every (setting, k) as configured; writes the results to ``config.out`` and returns them."""
    check_split()  # evaluation tasks share no template, frame or label with training
    if config.threads:
        torch.set_num_threads(config.threads)
    task = TASKS[config.benchmark]
    max_new_tokens = config.max_new_tokens or task.max_new_tokens
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    templates = Templates() if config.plain_templates else None  # None: the model's own (aim_recipe.json)
    backbone = load_backbone(
        resolve_model(config.model, config.model_cache), device=device, templates=templates
    )
    settings = config.setting_names
    shots = config.shot_counts
    projectors: dict[str, Projector] = {}
    checkpoints: dict[str, Path] = {}
    if "aim" in settings:
        projectors["aim"] = Projector.load(
            config.projector, backbone=backbone.name, hidden_size=backbone.hidden_size
        )
        checkpoints["aim"] = Path(config.projector)
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
        checkpoints[f"aim:{name}"] = Path(path)
        settings.append(f"aim:{name}")
    record_setting = None
    if config.record_into is not None:
        matches = [s for s, p in checkpoints.items() if p.resolve() == Path(config.record_into).resolve()]
        if not matches:
            raise EvaluationError(
                f"--record-into {config.record_into}: not a checkpoint this run evaluates "
                "(pass it as --projector or --also NAME=CKPT)"
            )
        record_setting = matches[0]
    # One encoder per projector, in the backbone's dtype: the server's read path, nothing else.
    encoders = {name: AimEncoder(backbone, p, dtype=backbone.dtype) for name, p in projectors.items()}
    query_encoder = AimEncoder(backbone, identity, dtype=backbone.dtype)  # queries do not use the projector

    policies = config.policies
    candidates = max(max(shots), config.candidates)
    items: list[EvalItem] = task.build(config.n_test, candidates, config.seed, config.pool)
    ev = Evaluator(backbone, max_new_tokens=max_new_tokens)

    # Fused tokens per distinct demonstration and projector: the bank's job, done before anything is timed.
    # The same encoding gives the image embedding the server would store for per-query selection.
    fused: dict[str, dict[str, torch.Tensor]] = {name: {} for name in encoders}
    image_embeddings: dict[str, torch.Tensor | None] = {}
    encode_seconds: dict[str, float] = {}
    distinct = {d.key: d for item in items for d in item.demonstrations[:candidates]}
    embedders = dict(encoders) or ({"query": query_encoder} if needs_embeddings(policies) else {})
    for name, encoder in embedders.items():
        t0 = time.perf_counter()
        for key, demo in distinct.items():
            encoded = encoder.encode_demonstration(ev.image(demo), demo.text)
            if name in fused:
                fused[name][key] = encoded.fused_tokens
            image_embeddings[key] = encoded.image_embedding
        encode_seconds[name] = time.perf_counter() - t0
        log.info(
            "%s: fused tokens for %d demonstrations in %.1f s", name, len(distinct), encode_seconds[name]
        )

    def query_embedding(item: EvalItem) -> torch.Tensor | None:
        return query_encoder.embed_query(ev.image(item.query), item.query.text).image_embedding

    picks = select_demonstrations(
        items, policies, shots, candidates, config.seed, image_embeddings, query_embedding
    )

    answers = [item.answer for item in items]
    majority = max(set(answers), key=answers.count)
    out: Path = config.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    results: list[dict] = []
    predictions: list[dict] = []
    records: list[dict] = []  # per (setting, k): per-item lists, for the paired tests

    def write(partial: bool) -> None:
        summary.update({
            "benchmark": config.benchmark,
            "task": {"scoring": task.scoring, "classification": task.classification, "chance": task.chance},
            "backbone": backbone.name,
            "projector": str(config.projector) if config.projector else None,
            "device": str(backbone.device),
            "n_test": len(items),
            "pool": config.pool,
            "candidates": candidates,
            "selection_policies": policies,
            "seed": config.seed,
            "shots": shots,
            "settings": settings,
            "max_new_tokens": max_new_tokens,
            "majority_answer": majority,
            "majority_accuracy": answers.count(majority) / len(answers),
            "fused_encode_seconds_per_demo": {k: v / max(1, len(distinct)) for k, v in encode_seconds.items()},
            "partial": partial,
            "results": results,
            "significance": significance(records, settings, shots, task.classification),
        })  # fmt: skip
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (out / "predictions.jsonl").open("w") as f:
            for p in predictions:
                f.write(json.dumps(p) + "\n")
        (out / "results.md").write_text(markdown_table(summary))

    from tqdm import tqdm

    def prompt_for(setting: str, item: EvalItem, k: int, chosen: Sequence[int]) -> torch.Tensor:
        image = ev.image(item.query)
        demos = [item.demonstrations[j] for j in chosen]
        if setting == "zero-shot" or k == 0:
            return aim_prompt(query_encoder, image, item.query.text, [])
        if setting in ("raw-icl", "raw-icl-jpeg"):
            jpeg = setting == "raw-icl-jpeg"
            q = backbone.raw_prompt_embeds(
                [(ev.image(d, jpeg=jpeg), d.text) for d in demos], image, item.query.text
            )
            return assemble_prompt(q, [])
        return aim_prompt(encoders[setting], image, item.query.text, [fused[setting][d.key] for d in demos])

    # Deterministic greedy answers: a prompt of the same demonstrations is answered (and measured against
    # the same teacher) once, whichever policy or k chose them; zero-shot once per item.
    answered: dict[tuple, tuple[Generation, float, int]] = {}
    measured: dict[tuple, tuple[float, float]] = {}  # (setting, item, chosen, teacher's) -> (first, kl)
    others = [s for s in settings if s not in ("zero-shot", "raw-icl")]
    order = (["raw-icl"] if "raw-icl" in settings else []) + (
        ["zero-shot"] if "zero-shot" in settings else []
    )
    for k in shots:
        for select in policies if k > 0 else [None]:
            teacher: dict[int, tuple[Generation, tuple[str, ...]]] = {}
            runs = (
                [s for s in order + others if s != "zero-shot" or select == policies[0]]
                if k
                else ["zero-shot"]
            )
            for setting in runs:
                own_select = None if setting == "zero-shot" else select  # zero-shot shows no demonstrations
                rec = {"setting": setting, "select": own_select, "k": k, "score": [], "agreement": [],
                       "first_token": [], "kl": [], "label_copy": [], "tokens": [], "seconds": []}  # fmt: skip
                by_type: dict[str, list[float]] = {}
                desc = f"{setting} {own_select or ''} k={k}"
                for i, item in enumerate(tqdm(items, desc=desc, disable=config.quiet, mininterval=5.0)):
                    chosen = picks[(select, k)][i] if own_select else []
                    keys = tuple(item.demonstrations[j].key for j in chosen)
                    embeds = None
                    if (setting, i, keys) not in answered:
                        t0 = time.perf_counter()
                        embeds = prompt_for(setting, item, k, chosen)
                        gen = ev.generate(embeds)
                        answered[(setting, i, keys)] = (gen, time.perf_counter() - t0, int(embeds.shape[0]))
                    gen, seconds, n_tokens = answered[(setting, i, keys)]
                    pred = first_line(gen.text)
                    score = _score(task.scoring, pred, item.answer)
                    agreement = first = kl = None
                    if setting == "raw-icl":
                        teacher[i] = (gen, keys)
                    elif i in teacher:  # fidelity against raw ICL at this k, teacher-forced on its answer
                        t, t_keys = teacher[i]
                        agreement = float(normalize_answer(pred) == normalize_answer(first_line(t.text)))
                        if (setting, i, keys, t_keys) not in measured:
                            if embeds is None:
                                embeds = prompt_for(setting, item, k, chosen)
                            student = answer_logits(backbone, embeds, t.answer_ids)
                            measured[(setting, i, keys, t_keys)] = (
                                float(first_token_agrees(t.logits, student, ev.stop_ids)),
                                kl_divergence(t.logits, student),
                            )
                        first, kl = measured[(setting, i, keys, t_keys)]
                    shown = [item.labels[j] for j in (picks[(select, k)][i] if select else [])]
                    copy = float(is_label_copy(pred, shown)) if task.classification and k > 0 else None
                    for name, value in (("score", score), ("agreement", agreement), ("first_token", first),
                                        ("kl", kl), ("label_copy", copy), ("tokens", n_tokens),
                                        ("seconds", seconds)):  # fmt: skip
                        rec[name].append(value)
                    by_type.setdefault(item.qtype, []).append(score)
                    predictions.append({"setting": setting, "select": own_select, "k": k, "item": i,
                                        "question": item.query.text, "answer": item.answer, "chosen": chosen,
                                        "prediction": pred, "raw": gen.text, "correct": score, "agreement": agreement,
                                        "label_copy": copy, "kl": kl})  # fmt: skip
                row = {
                    "setting": setting,
                    "select": own_select,
                    "k": k,
                    "n": len(items),
                    "accuracy": _mean(rec["score"]),
                    "agreement": 1.0 if setting == "raw-icl" else _mean(rec["agreement"]),
                    "first_token_agreement": 1.0 if setting == "raw-icl" else _mean(rec["first_token"]),
                    "kl": 0.0 if setting == "raw-icl" else _mean(rec["kl"]),
                    "label_copy_rate": _mean(rec["label_copy"]),
                    "prompt_tokens": _mean(rec["tokens"]),
                    "latency_ms": 1000 * _mean(rec["seconds"]),
                    "by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
                }
                if k == 0:
                    row["agreement"] = row["first_token_agreement"] = row["kl"] = None
                results.append(row)
                if setting == "raw-icl":
                    rec["agreement"] = [1.0] * len(items)
                records.append({**rec, "agreement": [v if v is not None else 0.0 for v in rec["agreement"]],
                                "label_copy": [v if v is not None else 0.0 for v in rec["label_copy"]]})  # fmt: skip
                write(partial=True)
                log.info("%s %s k=%d: accuracy %.3f, agreement %s, label copy %s, %.0f prompt tokens, %.0f ms",
                         setting, own_select or "", k, row["accuracy"], row["agreement"], row["label_copy_rate"],
                         row["prompt_tokens"], row["latency_ms"])  # fmt: skip

    write(partial=False)
    plot(summary, out / "results.png")
    if record_setting is not None:
        key = f"{config.benchmark}/seed{config.seed}/n{len(items)}"
        record_fidelity(config.record_into, key, fidelity_figures(summary, record_setting))
        log.info("fidelity of %s recorded into %s (%s)", record_setting, config.record_into, key)
    return summary
