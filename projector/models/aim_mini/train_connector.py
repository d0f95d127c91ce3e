"""LLaVA stage-1 connector training for aim-mini on easy-VQA image descriptions.

    python -m projector.models.aim_mini.train_connector [--out projector/models/aim_mini/weights/connector.safetensors]

Both pretrained parts (EfficientNet-Lite0, SmolLM2) stay frozen; only the spatial part of Llava's
``multi_modal_projector`` trains (``linear_1``'s columns for the 1280 CNN features and the bias
feature); the caption's columns, the decoder's own word embeddings, stay as ``build.set_connector``
made them. Each example is the chat prompt "<image>\\nDescribe the image."
(SmolLM2's chat template) followed by a description of the image ("A red circle."); the language-
model loss is taken on the description tokens and the closing ``<|im_end|>`` only. Held-out loss
is measured on easy-VQA *test* images with fixed phrasings. Writes the connector as safetensors
and, beside it, a JSON record of how it was made.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from projector.optim import token_weighted_loss, warmup_cosine_lr

from . import DEFAULT_CONNECTOR
from .build import IMAGE_TOKEN, SPATIAL_FEATURES, SPATIAL_KEY
from .data import DESCRIBE_PROMPT, TEMPLATES, ShapeImage, describe, load_rgb, load_split

log = logging.getLogger(__name__)

# The shipped connector's recipe (weights/connector.json). One thread: results depend on the thread
# count, and the machines this runs on are small and shared; --threads 2 is faster on an idle one.
DEFAULTS = dict(
    steps=200, batch_size=8, lr=1e-3, warmup=20, weight_decay=0.0, seed=0, eval_every=25, n_eval=48, threads=1
)


class DescriptionBatcher:
    """Turns (image, description) pairs into Llava inputs with labels on the description only."""

    def __init__(self, processor, image_tokens: int):
        self.processor = processor
        self.tok = processor.tokenizer
        messages = [{"role": "user", "content": "<image>\n" + DESCRIBE_PROMPT}]
        prompt = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # what processor(images=..., text=prompt) gives: <image> expanded to its placeholder tokens
        prompt = prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * image_tokens)
        self.prompt_ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        image_id = self.tok.convert_tokens_to_ids(IMAGE_TOKEN)
        self.prefix_ids = self.prompt_ids[: self.prompt_ids.index(image_id)]
        self.eos_id = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id

    def __call__(self, items: list[ShapeImage], texts: list[str]) -> dict[str, torch.Tensor]:
        images = [load_rgb(it.path) for it in items]
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        targets = [self.tok(t, add_special_tokens=False)["input_ids"] + [self.eos_id] for t in texts]
        n = len(self.prompt_ids) + max(len(t) for t in targets)
        input_ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), n), dtype=torch.long)
        labels = torch.full((len(items), n), -100, dtype=torch.long)
        p = len(self.prompt_ids)
        for i, t in enumerate(targets):
            input_ids[i, :p] = torch.tensor(self.prompt_ids)
            input_ids[i, p : p + len(t)] = torch.tensor(t)
            attention[i, : p + len(t)] = 1
            labels[i, p : p + len(t)] = torch.tensor(t)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "pixel_values": pixel_values,
            "labels": labels,
        }


class PrefixCache:
    """Key/value cache of the prompt's text before the first image token (system prompt and chat
    header), identical for every example: computed once without gradients and reused, which saves
    about a third of each step's decoder work. Exact: the decoder is causal and frozen."""

    def __init__(self, model, prefix_ids: list[int]):
        self.length = len(prefix_ids)
        with torch.no_grad():
            out = model.model.language_model(input_ids=torch.tensor([prefix_ids]), use_cache=True)
        self._cache = out.past_key_values

    def get(self, batch_size: int):
        cache = copy.deepcopy(self._cache)
        if batch_size > 1:
            cache.batch_repeat_interleave(batch_size)
        return cache


def description_loss(
    model, batch: dict[str, torch.Tensor], reduction: str = "mean", prefix: PrefixCache | None = None
) -> torch.Tensor:
    """LM loss on labelled positions; logits are computed only where a label is (the LM head is big).

    With ``prefix``, the first ``prefix.length`` tokens of every row (which must be the shared
    prefix) come from the cache instead of being recomputed.
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    if prefix is None:
        out = model.model(
            input_ids=input_ids, attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        )
    else:
        p = prefix.length
        rest = input_ids[:, p:]
        embeds = model.get_input_embeddings()(rest)
        feats = model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        feats = torch.cat(list(feats), dim=0).to(embeds.dtype)
        mask = (rest == model.config.image_token_index).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, feats)
        out = model.model.language_model(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            past_key_values=prefix.get(input_ids.shape[0]),
            use_cache=True,
        )
        labels = labels[:, p:]
    hidden = out.last_hidden_state[:, :-1]
    labels = labels[:, 1:]
    mask = labels != -100
    logits = model.lm_head(hidden[mask]).float()
    return F.cross_entropy(logits, labels[mask], reduction=reduction)


def heldout_loss(
    model,
    batcher: DescriptionBatcher,
    items: list[ShapeImage],
    batch_size: int = 16,
    prefix: PrefixCache | None = None,
) -> float:
    """Mean per-token description loss on ``items``, phrasing ``i % len(TEMPLATES)`` for item ``i``."""

    def chunk_loss(chunk: list[ShapeImage], start: int) -> tuple[float, int]:
        texts = [describe(it, template=(start + j) % len(TEMPLATES)) for j, it in enumerate(chunk)]
        batch = batcher(chunk, texts)
        loss_sum = description_loss(model, batch, reduction="sum", prefix=prefix).item()
        return loss_sum, int((batch["labels"][:, 1:] != -100).sum())

    return token_weighted_loss(items, batch_size, chunk_loss)


def eval_items(n: int, seed: int = 1234) -> list[ShapeImage]:
    """A fixed, seeded sample of easy-VQA test images (the held-out set)."""
    items = load_split("test")
    random.Random(seed).shuffle(items)
    return items[:n]


def connector_state(model) -> dict[str, torch.Tensor]:
    """What the connector file holds: the trained spatial columns (the rest is derived at build)."""
    weight = model.model.multi_modal_projector.linear_1.weight[:, :SPATIAL_FEATURES]
    return {SPATIAL_KEY: weight.detach().float().contiguous().clone()}


def tensor_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of the tensors themselves (names, dtypes, shapes, bytes), independent of file layout."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def train_connector(
    out: Path = DEFAULT_CONNECTOR,
    *,
    steps: int = DEFAULTS["steps"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    warmup: int = DEFAULTS["warmup"],
    weight_decay: float = DEFAULTS["weight_decay"],
    seed: int = DEFAULTS["seed"],
    eval_every: int = DEFAULTS["eval_every"],
    n_eval: int = DEFAULTS["n_eval"],
    threads: int | None = DEFAULTS["threads"],
    command: str | None = None,
) -> dict:
    """Train the connector and write ``out`` (safetensors) and ``out.with_suffix('.json')``.

    Returns the JSON record (settings, losses, timings). Deterministic for a given seed and
    thread count on one machine.
    """
    from safetensors.torch import save_file

    from .build import assemble

    t_start = time.time()
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    model, processor = assemble(connector=None, seed=seed)
    model.eval()  # frozen BatchNorm statistics; no dropout anywhere
    for p in model.parameters():
        p.requires_grad_(False)
    weight = model.model.multi_modal_projector.linear_1.weight
    weight.requires_grad_(True)
    trained = torch.zeros_like(weight)
    trained[:, :SPATIAL_FEATURES] = 1.0
    # AdamW without weight decay leaves a parameter whose gradient is always 0 exactly where it was.
    weight.register_hook(lambda grad: grad * trained)
    params = [weight]
    t_built = time.time()

    batcher = DescriptionBatcher(processor, model.config.image_seq_length)
    train = load_split("train")
    held = eval_items(n_eval)
    rng = random.Random(seed)
    order: list[ShapeImage] = []

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 0
        return warmup_cosine_lr(step, steps, lr, warmup)

    history: list[dict] = []
    prefix = PrefixCache(model, batcher.prefix_ids)
    initial_heldout = heldout_loss(model, batcher, held, prefix=prefix)
    log.info("step 0: held-out loss %.4f (random connector)", initial_heldout)
    history.append({"step": 0, "heldout_loss": initial_heldout})
    window: list[float] = []
    t_train = time.time()
    for step in range(steps):
        if len(order) < batch_size:
            fresh = train[:]
            rng.shuffle(fresh)
            order.extend(fresh)
        items, order = order[:batch_size], order[batch_size:]
        texts = [describe(it, rng) for it in items]
        batch = batcher(items, texts)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = description_loss(model, batch, prefix=prefix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window.append(loss.item())
        done = step + 1
        if done % 10 == 0 or done == steps:
            log.info(
                "step %d/%d  train loss %.4f  lr %.2e  %.2f s/step",
                done,
                steps,
                sum(window[-10:]) / len(window[-10:]),
                lr_at(step),
                (time.time() - t_train) / done,
            )
        if done % eval_every == 0 or done == steps:
            h = heldout_loss(model, batcher, held, prefix=prefix)
            rec = {"step": done, "train_loss": sum(window) / len(window), "heldout_loss": h}
            history.append(rec)
            window = []
            log.info("step %d: train loss %.4f  held-out loss %.4f", done, rec["train_loss"], h)
    t_end = time.time()

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = connector_state(model)
    # one metadata key: safetensors writes a multi-key metadata map in varying order (file bytes would differ)
    save_file(state, str(out), metadata={"format": "pt"})
    record = {
        "what": "aim-mini connector, trained part: linear_1 columns of the 1280 spatial features + bias "
        "(Llava multi_modal_projector, linear activation; caption columns = decoder word embeddings)",
        "command": command or f"python -m projector.models.aim_mini.train_connector --out {out}",
        "recipe": "LLaVA stage 1: vision tower and decoder frozen; "
        "LM loss on description tokens + <|im_end|> only",
        "prompt": "SmolLM2 chat template, user: '<image>\\n" + DESCRIBE_PROMPT + "'",
        "data": {
            "train": f"easy-VQA train images with shape/colour determined by their questions ({len(train)})",
            "heldout": f"{len(held)} easy-VQA test images (seeded sample), phrasing i % {len(TEMPLATES)}",
            "phrasings": list(TEMPLATES),
        },
        "settings": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "warmup": warmup,
            "schedule": "cosine",
            "weight_decay": weight_decay,
            "grad_clip": 1.0,
            "optimizer": "AdamW",
            "seed": seed,
            "threads": torch.get_num_threads(),
            "dtype": "float32",
        },
        "losses": {
            "initial_heldout": initial_heldout,
            "final_train": history[-1].get("train_loss"),
            "final_heldout": history[-1]["heldout_loss"],
            "history": history,
        },
        "timing_s": {
            "assemble": round(t_built - t_start, 1),
            "train_incl_evals": round(t_end - t_train, 1),
            "total": round(t_end - t_start, 1),
        },
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "tensor_sha256": tensor_sha256(state),
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
        },
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s (%.0f s total)", out, t_end - t_start)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aim train-connector", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_CONNECTOR, help="connector safetensors to write")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"])
    p.add_argument("--n-eval", type=int, default=DEFAULTS["n_eval"])
    p.add_argument(
        "--threads", type=int, default=DEFAULTS["threads"], help="torch threads (0: torch's choice)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from .sources import MissingPackageError

    argv_used = sys.argv[1:] if argv is None else argv
    command = "python -m projector.models.aim_mini.train_connector " + shlex.join(argv_used)
    try:
        rec = train_connector(
            args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            weight_decay=args.weight_decay,
            seed=args.seed,
            eval_every=args.eval_every,
            n_eval=args.n_eval,
            threads=args.threads,
            command=command.strip(),
        )
    except MissingPackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rec["losses"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
