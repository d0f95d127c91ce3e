"""Train an AIM projector on a frozen backbone: ``train(TrainConfig) -> summary`` (``aim train``).

Each training example is an episode (see ``projector.training.episodes``): the demonstrations go
through the frozen backbone once (no grad; ``projector.training.features`` caches them) and then
through the projector (grad) to become fused tokens; the prompt is the AIM layout
(``projector.prompt.assemble_prompt``) followed by the embeddings of the target tokens; the loss is
the backbone's language-model cross-entropy on the target tokens only (labels -100 elsewhere).
Gradients flow through the frozen decoder into the projector, the only thing that learns.

Output directory: the latest projector (``projector.json`` + ``model.safetensors``, the format the
server loads), ``best/`` (lowest held-out loss), ``training_state.{json,safetensors}`` (for
``resume``: step, optimiser moments, no pickle) and ``train_log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from projector.backbone import Backbone, QueryEmbedding, load_backbone
from projector.models import resolve_model
from projector.optim import warmup_cosine_lr
from projector.projector import Projector, ProjectorConfig, write_provenance
from projector.prompt import assemble_prompt
from projector.templates import Templates
from projector.training.config import TrainConfig, TrainingError
from projector.training.distill import TeacherAnswers, TeacherCache, topk_kl
from projector.training.episodes import Episode
from projector.training.features import FeatureCache
from projector.training.generic import fashion_mnist_installed, vocabulary_pairs
from projector.training.init import lstsq_init
from projector.training.sources import load_sources
from projector.training.state import STATE_JSON, load_state, save_state

log = logging.getLogger("aim.train")
LR_FLOOR = 0.1  # the cosine decays to this share of the learning rate


# -- batches --------------------------------------------------------------------------------------
# Reconstruction rows: [query prefix] + a demonstration's fused tokens + this cue, then its text.
RECONSTRUCTION_CUE = "\nRepeat:"


@dataclass(frozen=True)
class Objective:
    """What a step minimises: ``lm`` (cross-entropy on the target), ``kl`` (KL from the raw-ICL teacher
    over the target, teacher-forced), ``both`` (lm + kl_weight * kl); plus ``reconstruction`` times the
    LM loss of regenerating a demonstration's text from its fused tokens."""

    kind: str = "lm"
    kl_weight: float = 1.0
    reconstruction: float = 0.0
    teacher: TeacherCache | None = None

    @property
    def uses_teacher(self) -> bool:
        return self.kind in ("kl", "both")


def episode_embeds(
    ep: Episode, projector: Projector, cache: FeatureCache, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds [L, d], labels [L]) for one episode; only the target tokens are labelled."""
    q = cache.query(ep.query)
    ids, target = cache.target(ep.target)
    fused = [cache.fused(d, projector, device) for d in ep.demonstrations]
    query = QueryEmbedding(prefix=q.prefix.to(device), body=q.body.to(device), image_tokens=0)
    embeds = torch.cat([assemble_prompt(query, fused), target.to(device)], dim=0)
    labels = torch.full((embeds.shape[0],), -100, dtype=torch.long, device=device)
    labels[-ids.numel() :] = ids.to(device)
    return embeds, labels


def reconstruction_embeds(
    ep: Episode, demo_index: int, projector: Projector, cache: FeatureCache, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds, labels) asking the decoder to regenerate one demonstration's text from its fused
    tokens: ``[query prefix] + fused + cue + text``, the text labelled."""
    demo = ep.demonstrations[demo_index]
    prefix = cache.query(ep.query).prefix.to(device)
    _, cue = cache.target(RECONSTRUCTION_CUE)
    ids, text = cache.target(demo.text)
    fused = cache.fused(demo, projector, device)
    embeds = torch.cat([prefix, fused, cue.to(device), text.to(device)], dim=0)
    labels = torch.full((embeds.shape[0],), -100, dtype=torch.long, device=device)
    labels[-ids.numel() :] = ids.to(device)
    return embeds, labels


def _forward(
    rows: list[tuple[torch.Tensor, torch.Tensor]], backbone: Backbone
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, L, V] and labels [B, L] of right-padded rows (padding masked out of attention)."""
    device, dtype = backbone.device, backbone.dtype
    longest = max(e.shape[0] for e, _ in rows)
    d = rows[0][0].shape[1]
    embeds, labels, mask = [], [], torch.zeros(len(rows), longest, dtype=torch.long, device=device)
    for i, (e, lab) in enumerate(rows):
        pad = longest - e.shape[0]
        embeds.append(torch.cat([e.to(dtype), torch.zeros(pad, d, dtype=dtype, device=device)]))
        labels.append(torch.cat([lab, torch.full((pad,), -100, dtype=torch.long, device=device)]))
        mask[i, : e.shape[0]] = 1
    logits = backbone.model(inputs_embeds=torch.stack(embeds), attention_mask=mask).logits
    return logits, torch.stack(labels)


def _target_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict each labelled token ([N, V]) and those tokens ([N])."""
    shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
    keep = shifted_labels != -100
    return shifted_logits[keep], shifted_labels[keep]


def batch_losses(
    episodes: list[Episode],
    projector: Projector,
    cache: FeatureCache,
    backbone: Backbone,
    objective: Objective = Objective(),
    *,
    reconstruct: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """The objective's parts over a batch, each a mean over its tokens: ``lm``, ``kl`` (with a teacher),
    ``reconstruction`` (when its weight is set; ``reconstruct[i]`` picks episode i's demonstration,
    default the first), and ``loss``, the weighted total the optimiser sees."""
    device = backbone.device
    logits, labels = _forward([episode_embeds(ep, projector, cache, device) for ep in episodes], backbone)
    student, targets = _target_logits(logits, labels)
    parts = {"lm": torch.nn.functional.cross_entropy(student.float(), targets)}
    if objective.teacher is not None:
        teacher = [objective.teacher.get(ep) for ep in episodes]  # rows are in episode order, as is `student`
        ids = torch.cat([t[0] for t in teacher]).to(device)
        logp = torch.cat([t[1] for t in teacher]).to(device)
        parts["kl"] = topk_kl(student, ids, logp).mean()
    if objective.reconstruction > 0:
        picks = reconstruct or [0] * len(episodes)
        rows = [reconstruction_embeds(ep, j, projector, cache, device)
                for ep, j in zip(episodes, picks, strict=True) if ep.demonstrations]  # fmt: skip
        if rows:
            r_logits, r_labels = _forward(rows, backbone)
            r_student, r_targets = _target_logits(r_logits, r_labels)
            parts["reconstruction"] = torch.nn.functional.cross_entropy(r_student.float(), r_targets)
    if objective.kind == "lm":
        loss = parts["lm"]
    elif objective.kind == "kl":
        loss = parts["kl"]
    else:
        loss = parts["lm"] + objective.kl_weight * parts["kl"]
    if "reconstruction" in parts:
        loss = loss + objective.reconstruction * parts["reconstruction"]
    parts["loss"] = loss
    return parts


def batch_loss(
    episodes: list[Episode], projector: Projector, cache: FeatureCache, backbone: Backbone,
    objective: Objective = Objective(),
) -> torch.Tensor:  # fmt: skip
    """The objective's total loss over a batch (default: mean LM loss over the target tokens)."""
    return batch_losses(episodes, projector, cache, backbone, objective)["loss"]


def heldout_losses(episodes: list[Episode], projector: Projector, cache: FeatureCache, backbone: Backbone,
                   batch_size: int, objective: Objective = Objective()) -> dict[str, float]:  # fmt: skip
    """Each part of the objective over the held-out episodes, weighted by each batch's target tokens."""
    totals: dict[str, float] = {}
    weight = 0
    with torch.no_grad():
        for start in range(0, len(episodes), batch_size):
            chunk = episodes[start : start + batch_size]
            n = sum(cache.target(ep.target)[0].numel() for ep in chunk)
            for name, value in batch_losses(chunk, projector, cache, backbone, objective).items():
                totals[name] = totals.get(name, 0.0) + float(value) * n
            weight += n
    return {name: total / max(weight, 1) for name, total in totals.items()}


def heldout_loss(episodes: list[Episode], projector: Projector, cache: FeatureCache, backbone: Backbone,
                 batch_size: int, objective: Objective = Objective()) -> float:  # fmt: skip
    """Token-weighted mean of the objective's loss over the held-out episodes."""
    return heldout_losses(episodes, projector, cache, backbone, batch_size, objective)["loss"]


def _prefixed(parts: dict[str, float]) -> dict[str, float]:
    return {f"heldout_{k}": v for k, v in parts.items() if k != "loss"}


def train(config: TrainConfig) -> dict:
    """Run training as configured; returns a summary (also written to ``train_log.jsonl``)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out: Path = config.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    templates = Templates() if config.plain_templates else None  # None: the model's own (aim_recipe.json)
    # The data first: a bad source or too few episodes fails before any model loads.
    episodes = load_sources(config.data, seed=config.seed, max_shots=config.max_shots)
    if len(episodes) < 10:
        raise TrainingError(f"only {len(episodes)} episodes: need at least 10")
    backbone = load_backbone(
        resolve_model(config.model, config.model_cache), device=device, templates=templates
    )
    order = list(range(len(episodes)))
    random.Random(config.seed).shuffle(order)
    n_held = max(8, int(len(episodes) * config.heldout))
    held = [episodes[i] for i in order[:n_held]]
    train_eps = [episodes[i] for i in order[n_held:]]
    log.info(
        "backbone %s on %s; %d training and %d held-out episodes",
        backbone.name,
        device,
        len(train_eps),
        n_held,
    )

    cache = FeatureCache(backbone, layer=config.layer, cache_dir=config.cache_dir)
    t0 = time.time()
    cache.warm(held + train_eps, progress=not config.quiet)
    t_features = time.time() - t0
    log.info("backbone features for %d episodes in %.1f s", len(episodes), t_features)
    if config.distil_on == "teacher":
        t0 = time.time()
        relabelled = TeacherAnswers(backbone, cache_dir=config.cache_dir).relabel(
            held + train_eps, progress=not config.quiet
        )
        held, train_eps = relabelled[:n_held], relabelled[n_held:]
        t_features += time.time() - t0
        log.info("raw-ICL greedy answers for %d episodes in %.1f s", len(episodes), time.time() - t0)
    teacher = None
    if config.objective in ("kl", "both"):
        teacher = TeacherCache(cache, top_k=config.teacher_top_k, cache_dir=config.cache_dir)
        t0 = time.time()
        teacher.warm(held + train_eps, progress=not config.quiet)
        t_features += time.time() - t0
        log.info("raw-ICL teacher distributions for %d episodes in %.1f s", len(episodes), time.time() - t0)
    objective = Objective(config.objective, config.kl_weight, config.reconstruction, teacher)

    projector_config = ProjectorConfig(
        kind=config.kind, hidden_size=backbone.hidden_size, layer=config.layer, backbone=backbone.name
    )
    projector = Projector(projector_config).to(device)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, best = 0, float("inf")
    log_path = out / "train_log.jsonl"
    if config.resume:
        if not (out / STATE_JSON).exists():
            raise TrainingError(f"--resume: no {STATE_JSON} in {out}")
        loaded = Projector.load(out, backbone=backbone.name, hidden_size=backbone.hidden_size)
        projector.load_state_dict(loaded.state_dict())
        info = load_state(out, optimizer)
        step, best = int(info["step"]), float(info["best_heldout"])
        log.info("resumed at step %d (best held-out %.4f)", step, best)
    elif config.init == "lstsq":
        vocabulary = vocabulary_pairs(train_eps, config.init_vocabulary) if config.init_vocabulary else []
        rows = lstsq_init(projector, train_eps, cache, ridge=config.ridge, vocabulary=vocabulary)
        log.info("least-squares initialisation from %d token rows", rows)
    else:
        log_path.unlink(missing_ok=True)

    def record(entry: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def provenance(held_parts: dict | None) -> dict:
        """training.json: how these weights were made (``aim eval --record-into`` adds fidelity)."""
        return {
            "backbone": backbone.identity(),
            "objective": config.objective,
            "kl_weight": config.kl_weight if config.objective == "both" else None,
            "reconstruction": config.reconstruction,
            "teacher_top_k": config.teacher_top_k if teacher is not None else None,
            "distil_on": config.distil_on,
            "kind": config.kind,
            "layer": config.layer,
            "init": config.init,
            "init_vocabulary": config.init_vocabulary if config.init == "lstsq" else None,
            "ridge": config.ridge if config.init == "lstsq" else None,
            "data": config.data,
            "fashion_mnist": fashion_mnist_installed(),  # generic/binding: clothing, or shapes only
            "episodes": len(train_eps),
            "heldout_episodes": n_held,
            "max_shots": config.max_shots,
            "steps": step,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "seed": config.seed,
            "plain_templates": config.plain_templates,
            "heldout": held_parts,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def save_projector(where: Path, held_parts: dict | None) -> None:
        projector.save(where)
        write_provenance(where, provenance(held_parts))

    def checkpoint(heldout: float | None, held_parts: dict | None = None) -> None:
        nonlocal best
        save_projector(out, held_parts)
        if heldout is not None and heldout < best:
            best = heldout
            save_projector(out / "best", held_parts)
        save_state(out, step, best, optimizer, {"args": {k: str(v) for k, v in asdict(config).items()}})

    projector.train()

    def held_out() -> dict[str, float]:
        return {k: round(v, 4) for k, v in
                heldout_losses(held, projector, cache, backbone, config.batch_size, objective).items()}  # fmt: skip

    initial_parts = held_out() if step == 0 else None
    initial = initial_parts["loss"] if initial_parts is not None else None
    if initial_parts is not None:
        log.info("step 0 held-out %s", initial_parts)
        record({"step": 0, "heldout_loss": initial, **_prefixed(initial_parts),
                "elapsed_s": round(time.time() - t_start, 1)})  # fmt: skip
        best = min(best, initial)
        save_projector(out / "best", initial_parts)
    last_parts = initial_parts

    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=step, desc="train", disable=config.quiet, mininterval=2.0)
    t_train = time.time()
    last_held = initial
    running = None
    stopped_early = False
    while step < config.steps:
        rng = random.Random(config.seed * 1_000_003 + step)  # batch of a step is a function of (seed, step)
        batch = [train_eps[rng.randrange(len(train_eps))] for _ in range(config.batch_size)]
        picks = [
            rng.randrange(max(1, len(ep.demonstrations))) for ep in batch
        ]  # reconstructed demonstrations
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, config.steps, config.lr, config.warmup, floor=LR_FLOOR)
        loss = batch_losses(batch, projector, cache, backbone, objective, reconstruct=picks)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), 1.0)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", held=f"{last_held:.3f}" if last_held is not None else "-")
        timed_out = config.max_minutes is not None and (time.time() - t_train) / 60 >= config.max_minutes
        if step % config.eval_every == 0 or step == config.steps or timed_out:
            last_parts = held_out()
            last_held = last_parts["loss"]
            entry = {"step": step, "train_loss": round(running, 4), "heldout_loss": round(last_held, 4),
                     **_prefixed(last_parts), "lr": optimizer.param_groups[0]["lr"],
                     "elapsed_s": round(time.time() - t_start, 1)}  # fmt: skip
            record(entry)
            bar.write(json.dumps(entry))
            checkpoint(last_held, last_parts)
        elif step % config.save_every == 0:
            checkpoint(None, last_parts)
        if timed_out:
            stopped_early = step < config.steps
            break
    bar.close()
    summary = {
        "event": "done",
        "step": step,
        "stopped_by_time": stopped_early,
        "objective": config.objective,
        "initial_heldout_loss": initial,
        "final_heldout_loss": last_held,
        "best_heldout_loss": best,
        "initial_heldout": initial_parts,
        "final_heldout": last_parts,
        "feature_seconds": round(t_features, 1),
        "train_seconds": round(time.time() - t_train, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "episodes": len(train_eps),
        "heldout_episodes": n_held,
        "backbone": backbone.name,
    }
    record(summary)
    log.info("done: %s", json.dumps(summary))
    return summary
