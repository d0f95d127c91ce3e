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
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from projector.backbone import Backbone, QueryEmbedding, load_backbone
from projector.models import resolve_model
from projector.optim import token_weighted_loss, warmup_cosine_lr
from projector.projector import Projector, ProjectorConfig
from projector.prompt import assemble_prompt
from projector.templates import Templates
from projector.training.config import TrainConfig, TrainingError
from projector.training.episodes import Episode
from projector.training.features import FeatureCache
from projector.training.sources import load_sources

log = logging.getLogger("aim.train")
STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"
LR_FLOOR = 0.1  # the cosine decays to this share of the learning rate


# -- batches --------------------------------------------------------------------------------------
def episode_embeds(
    ep: Episode, projector: Projector, cache: FeatureCache, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds [L, d], labels [L]) for one episode; only the target tokens are labelled."""
    q = cache.query(ep.query)
    ids, target = cache.target(ep.target)
    fused = [projector(cache.demonstration(d).to(device)) for d in ep.demonstrations]
    query = QueryEmbedding(prefix=q.prefix.to(device), body=q.body.to(device), image_tokens=0)
    embeds = torch.cat([assemble_prompt(query, fused), target.to(device)], dim=0)
    labels = torch.full((embeds.shape[0],), -100, dtype=torch.long, device=device)
    labels[-ids.numel() :] = ids.to(device)
    return embeds, labels


def batch_loss(
    episodes: list[Episode], projector: Projector, cache: FeatureCache, backbone: Backbone
) -> torch.Tensor:
    """Mean LM loss over the target tokens of a batch (right padding, attention mask)."""
    device = backbone.device
    rows = [episode_embeds(ep, projector, cache, device) for ep in episodes]
    longest = max(e.shape[0] for e, _ in rows)
    d = rows[0][0].shape[1]
    dtype = backbone.dtype
    embeds, labels, mask = [], [], torch.zeros(len(rows), longest, dtype=torch.long, device=device)
    for i, (e, lab) in enumerate(rows):
        pad = longest - e.shape[0]
        embeds.append(torch.cat([e.to(dtype), torch.zeros(pad, d, dtype=dtype, device=device)]))
        labels.append(torch.cat([lab, torch.full((pad,), -100, dtype=torch.long, device=device)]))
        mask[i, : e.shape[0]] = 1
    out = backbone.model(inputs_embeds=torch.stack(embeds), attention_mask=mask, labels=torch.stack(labels))
    return out.loss


def heldout_loss(episodes: list[Episode], projector: Projector, cache: FeatureCache, backbone: Backbone,
                 batch_size: int) -> float:  # fmt: skip
    """Token-weighted mean loss over the held-out episodes."""

    def chunk_loss(chunk: list[Episode], start: int) -> tuple[float, int]:
        n = sum(cache.target(ep.target)[0].numel() for ep in chunk)
        return float(batch_loss(chunk, projector, cache, backbone)) * n, n

    return token_weighted_loss(episodes, batch_size, chunk_loss)


# -- initialisation -------------------------------------------------------------------------------
def lstsq_init(projector: Projector, episodes: list[Episode], cache: FeatureCache, *, ridge: float = 0.1,
               max_items: int = 2000) -> int:  # fmt: skip
    """Set a linear projector to the ridge-regression map from a demonstration's hidden states to the
    input embeddings of the same text tokens: fused tokens then start out close to the text itself
    (with whatever the hidden states carry about the image mixed in). Returns the rows fitted."""
    if projector.config.kind != "linear":
        raise TrainingError("--init lstsq needs a linear projector")
    backbone = cache.backbone
    emb = backbone.model.get_input_embeddings()
    special = set(backbone.special_ids.tolist()) | {backbone.image_token_id}
    hs, es, seen = [], [], set()
    for ep in episodes:
        for d in ep.demonstrations:
            if d.key in seen or len(seen) >= max_items:
                continue
            seen.add(d.key)
            h = cache.demonstration(d)
            prompt = backbone.templates.demonstration.format(text=d.text)
            ids = [i for i in backbone.tokenizer(prompt)["input_ids"] if i not in special]
            if len(ids) != h.shape[0]:
                continue
            with torch.no_grad():
                es.append(emb(torch.tensor(ids, device=backbone.device)).float().cpu())
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


# -- training state (no pickle) -------------------------------------------------------------------
def save_state(out: Path, step: int, best: float, optimizer: torch.optim.Optimizer, extra: dict) -> None:
    tensors = {}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        st = optimizer.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in st:
                tensors[f"{i}.{name}"] = st[name].detach().cpu().contiguous()
        if "step" in st:
            tensors[f"{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    save_file(tensors, str(out / STATE_TENSORS))
    (out / STATE_JSON).write_text(json.dumps({"step": step, "best_heldout": best, **extra}, indent=2))


def load_state(out: Path, optimizer: torch.optim.Optimizer) -> dict:
    info = json.loads((out / STATE_JSON).read_text())
    tensors = load_file(str(out / STATE_TENSORS))
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        if f"{i}.exp_avg" in tensors:
            optimizer.state[p] = {
                "step": tensors[f"{i}.step"].reshape(()).to(torch.float32),
                "exp_avg": tensors[f"{i}.exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{i}.exp_avg_sq"].to(p.device),
            }
    return info


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
        rows = lstsq_init(projector, train_eps, cache, ridge=config.ridge)
        log.info("least-squares initialisation from %d token rows", rows)
    else:
        log_path.unlink(missing_ok=True)

    def record(entry: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def checkpoint(heldout: float | None) -> None:
        nonlocal best
        projector.save(out)
        if heldout is not None and heldout < best:
            best = heldout
            projector.save(out / "best")
        save_state(out, step, best, optimizer, {"args": {k: str(v) for k, v in asdict(config).items()}})

    projector.train()
    initial = heldout_loss(held, projector, cache, backbone, config.batch_size) if step == 0 else None
    if initial is not None:
        log.info("step 0 held-out loss %.4f", initial)
        record({"step": 0, "heldout_loss": initial, "elapsed_s": round(time.time() - t_start, 1)})
        best = min(best, initial)
        projector.save(out / "best")

    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=step, desc="train", disable=config.quiet, mininterval=2.0)
    t_train = time.time()
    last_held = initial
    running = None
    stopped_early = False
    while step < config.steps:
        rng = random.Random(config.seed * 1_000_003 + step)  # batch of a step is a function of (seed, step)
        batch = [train_eps[rng.randrange(len(train_eps))] for _ in range(config.batch_size)]
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, config.steps, config.lr, config.warmup, floor=LR_FLOOR)
        loss = batch_loss(batch, projector, cache, backbone)
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
            last_held = heldout_loss(held, projector, cache, backbone, config.batch_size)
            entry = {"step": step, "train_loss": round(running, 4), "heldout_loss": round(last_held, 4),
                     "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - t_start, 1)}  # fmt: skip
            record(entry)
            bar.write(json.dumps(entry))
            checkpoint(last_held)
        elif step % config.save_every == 0:
            checkpoint(None)
        if timed_out:
            stopped_early = step < config.steps
            break
    bar.close()
    summary = {
        "event": "done",
        "step": step,
        "stopped_by_time": stopped_early,
        "initial_heldout_loss": initial,
        "final_heldout_loss": last_held,
        "best_heldout_loss": best,
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
