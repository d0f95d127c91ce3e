"""Train an AIM projector on a frozen backbone (``aim train``).

Each training example is an episode (see ``projector.training.episodes``): the demonstrations go through the
frozen backbone once (no grad) and then through the projector (grad) to become fused tokens; the
prompt is ``[query prefix] + fused tokens of each demonstration + [query body]``, followed by the
embeddings of the target tokens; the loss is the backbone's language-model cross-entropy on the
target tokens only (labels -100 elsewhere). Gradients flow through the frozen decoder into the
projector, the only thing that learns.

What the backbone computes does not depend on the projector, so demonstration hidden states, query
embeddings and target embeddings are computed once per distinct item and cached (in memory, and on
disk with ``--cache-dir``); a training step is then one decoder forward/backward.

Output directory: the latest projector (``projector.json`` + ``model.safetensors``, the format the
server loads), ``best/`` (lowest held-out loss), ``training_state.{json,safetensors}`` (for
``--resume``: step, optimiser moments, no pickle) and ``train_log.jsonl``.

    aim train --model DIR --data generic:2000 --out runs/p1 --steps 300
    aim train --model DIR --data jsonl:episodes.jsonl --data mmc4:docs.jsonl:images/ --out runs/p2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from projector.backbone import Backbone, QueryEmbedding, load_backbone
from projector.models import resolve_model
from projector.projector import Projector, ProjectorConfig
from projector.prompt import assemble_prompt
from projector.templates import Templates
from projector.training.episodes import (
    Episode,
    Pair,
    document_episodes,
    generic_episodes,
    read_episodes_jsonl,
    read_mmc4,
    read_obelics,
)

log = logging.getLogger("aim.train")
STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"


# -- cached backbone features ---------------------------------------------------------------------
@dataclass(frozen=True)
class QueryFeatures:
    prefix: torch.Tensor
    body: torch.Tensor


class FeatureCache:
    """Frozen-backbone features per item, keyed by the item's content and the backbone's identity.

    Demonstrations: hidden states at text positions ([n, d]); queries: prefix/body input embeddings;
    targets: token ids and their input embeddings. All float32 on CPU; moved to the device per step.
    """

    def __init__(self, backbone: Backbone, *, layer: int = -1, cache_dir: Path | None = None) -> None:
        self.backbone = backbone
        self.layer = layer
        ident = json.dumps({**backbone.identity(), "layer": layer}, sort_keys=True)
        self.scope = hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / self.scope if cache_dir is not None else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._demo: dict[str, torch.Tensor] = {}
        self._query: dict[str, QueryFeatures] = {}
        self._target: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _disk(self, kind: str, key: str) -> Path | None:
        return self.dir / f"{kind}-{key}.safetensors" if self.dir is not None else None

    def demonstration(self, pair: Pair) -> torch.Tensor:
        key = pair.key
        if key not in self._demo:
            path = self._disk("d", key)
            if path is not None and path.exists():
                self._demo[key] = load_file(str(path))["h"]
            else:
                with torch.no_grad():  # not inference mode: the projector's input must be usable in backward
                    enc = self.backbone.encode_demonstration(pair.load(), pair.text, layer=self.layer)
                h = enc.hidden_states.float().cpu().contiguous()
                if path is not None:
                    save_file({"h": h}, str(path))
                self._demo[key] = h
        return self._demo[key]

    def query(self, pair: Pair) -> QueryFeatures:
        key = pair.key
        if key not in self._query:
            path = self._disk("q", key)
            if path is not None and path.exists():
                t = load_file(str(path))
                self._query[key] = QueryFeatures(t["prefix"], t["body"])
            else:
                with torch.no_grad():
                    q = self.backbone.embed_query(pair.load(), pair.text)
                feats = QueryFeatures(q.prefix.float().cpu().contiguous(), q.body.float().cpu().contiguous())
                if path is not None:
                    save_file({"prefix": feats.prefix, "body": feats.body}, str(path))
                self._query[key] = feats
        return self._query[key]

    def target(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._target:
            ids = torch.tensor(
                self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long
            )
            if ids.numel() == 0:
                raise ValueError(f"empty target {text!r}")
            with torch.no_grad():
                emb = self.backbone.model.get_input_embeddings()(ids.to(self.backbone.device)).float().cpu()
            self._target[text] = (ids, emb)
        return self._target[text]

    def warm(self, episodes: list[Episode], *, progress: bool = True) -> None:
        """Compute every episode's features now (one pass with a progress bar)."""
        from tqdm import tqdm

        for ep in tqdm(episodes, desc="backbone features", disable=not progress, mininterval=2.0):
            for d in ep.demonstrations:
                self.demonstration(d)
            self.query(ep.query)
            self.target(ep.target)


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
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(episodes), batch_size):
            chunk = episodes[i : i + batch_size]
            n = sum(cache.target(ep.target)[0].numel() for ep in chunk)
            total += float(batch_loss(chunk, projector, cache, backbone)) * n
            tokens += n
    return total / max(tokens, 1)


# -- initialisation -------------------------------------------------------------------------------
def lstsq_init(projector: Projector, episodes: list[Episode], cache: FeatureCache, *, ridge: float = 0.1,
               max_items: int = 2000) -> int:  # fmt: skip
    """Set a linear projector to the ridge-regression map from a demonstration's hidden states to the
    input embeddings of the same text tokens: fused tokens then start out close to the text itself
    (with whatever the hidden states carry about the image mixed in). Returns the rows fitted."""
    if projector.config.kind != "linear":
        raise ValueError("--init lstsq needs a linear projector")
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
        raise ValueError("no demonstrations to fit the projector on")
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


# -- data sources ---------------------------------------------------------------------------------
def load_sources(specs: list[str], *, seed: int, max_shots: int) -> list[Episode]:
    episodes: list[Episode] = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if kind == "generic":
            n = int(rest) if rest else 2000
            episodes += generic_episodes(n, seed=seed, max_shots=max_shots)
        elif kind == "scenes":
            n = int(rest) if rest else 2000
            episodes += generic_episodes(n, seed=seed, max_shots=max_shots, fashion=False)
        elif kind == "jsonl":
            episodes += read_episodes_jsonl(Path(rest))
        elif kind in ("mmc4", "obelics"):
            path, _, image_dir = rest.rpartition(":")
            if not path:
                raise SystemExit(f"--data {kind}:JSONL:IMAGE_DIR expected, got {spec!r}")
            reader = read_mmc4 if kind == "mmc4" else read_obelics
            episodes += document_episodes(reader(Path(path), Path(image_dir)), max_shots=max_shots)
        else:
            raise SystemExit(
                f"unknown --data source {spec!r}: generic[:N], scenes[:N], jsonl:PATH, "
                "mmc4:PATH:IMAGE_DIR, obelics:PATH:IMAGE_DIR"
            )
    return episodes


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


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# -- the CLI --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aim train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--model", required=True, help="backbone: a LLaVA-family directory or hub id, 'tiny', 'aim-mini'"
    )
    p.add_argument("--data", action="append", required=True,
                   help="generic[:N] | scenes[:N] | jsonl:PATH | mmc4:PATH:IMAGE_DIR | obelics:PATH:IMAGE_DIR "
                        "(repeatable)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output directory (projector checkpoint + state)")
    p.add_argument("--kind", choices=["linear", "mlp"], default="linear")
    p.add_argument("--layer", type=int, default=-1, help="backbone hidden-state layer (default: last)")
    p.add_argument("--init", choices=["identity", "lstsq"], default="identity",
                   help="identity (the design's default) or a ridge fit of hidden states to the same tokens' "
                        "input embeddings (linear only)")  # fmt: skip
    p.add_argument(
        "--ridge",
        type=float,
        default=0.1,
        help="--init lstsq: ridge strength, relative to the mean diagonal of the hidden states' Gram matrix",
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
    p.add_argument("--model-cache", type=Path, default=Path.home() / ".cache" / "aim-serve" / "models")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> dict:
    """Run training as configured; returns a summary (also written to ``train_log.jsonl``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    templates = Templates() if args.plain_templates else None  # None: the model's own (aim_recipe.json)
    backbone = load_backbone(resolve_model(args.model, args.model_cache), device=device, templates=templates)
    episodes = load_sources(args.data, seed=args.seed, max_shots=args.max_shots)
    if len(episodes) < 10:
        raise SystemExit(f"only {len(episodes)} episodes: need at least 10")
    order = list(range(len(episodes)))
    random.Random(args.seed).shuffle(order)
    n_held = max(8, int(len(episodes) * args.heldout))
    held = [episodes[i] for i in order[:n_held]]
    train_eps = [episodes[i] for i in order[n_held:]]
    log.info(
        "backbone %s on %s; %d training and %d held-out episodes",
        backbone.name,
        device,
        len(train_eps),
        n_held,
    )

    cache = FeatureCache(backbone, layer=args.layer, cache_dir=args.cache_dir)
    t0 = time.time()
    cache.warm(held + train_eps, progress=not args.quiet)
    t_features = time.time() - t0
    log.info("backbone features for %d episodes in %.1f s", len(episodes), t_features)

    config = ProjectorConfig(
        kind=args.kind, hidden_size=backbone.hidden_size, layer=args.layer, backbone=backbone.name
    )
    projector = Projector(config).to(device)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step, best = 0, float("inf")
    log_path = out / "train_log.jsonl"
    if args.resume:
        if not (out / STATE_JSON).exists():
            raise SystemExit(f"--resume: no {STATE_JSON} in {out}")
        loaded = Projector.load(out, backbone=backbone.name, hidden_size=backbone.hidden_size)
        projector.load_state_dict(loaded.state_dict())
        info = load_state(out, optimizer)
        step, best = int(info["step"]), float(info["best_heldout"])
        log.info("resumed at step %d (best held-out %.4f)", step, best)
    elif args.init == "lstsq":
        rows = lstsq_init(projector, train_eps, cache, ridge=args.ridge)
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
        save_state(out, step, best, optimizer, {"args": {k: str(v) for k, v in vars(args).items()}})

    projector.train()
    initial = heldout_loss(held, projector, cache, backbone, args.batch_size) if step == 0 else None
    if initial is not None:
        log.info("step 0 held-out loss %.4f", initial)
        record({"step": 0, "heldout_loss": initial, "elapsed_s": round(time.time() - t_start, 1)})
        best = min(best, initial)
        projector.save(out / "best")

    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=step, desc="train", disable=args.quiet, mininterval=2.0)
    t_train = time.time()
    last_held = initial
    running = None
    stopped_early = False
    while step < args.steps:
        rng = random.Random(args.seed * 1_000_003 + step)  # batch of a step is a function of (seed, step)
        batch = [train_eps[rng.randrange(len(train_eps))] for _ in range(args.batch_size)]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
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
        timed_out = args.max_minutes is not None and (time.time() - t_train) / 60 >= args.max_minutes
        if step % args.eval_every == 0 or step == args.steps or timed_out:
            last_held = heldout_loss(held, projector, cache, backbone, args.batch_size)
            entry = {"step": step, "train_loss": round(running, 4), "heldout_loss": round(last_held, 4),
                     "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - t_start, 1)}  # fmt: skip
            record(entry)
            bar.write(json.dumps(entry))
            checkpoint(last_held)
        elif step % args.save_every == 0:
            checkpoint(None)
        if timed_out:
            stopped_early = step < args.steps
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
