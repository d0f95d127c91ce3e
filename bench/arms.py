"""AIM against the user's real alternative: raw multimodal few-shot prompts with vLLM's prefix cache.

Arms, each on the same queries and the same engine settings but prefix caching:

* ``aim`` / ``raw``: prefix caching off (``bench.shots``' comparison);
* ``raw+apc shared``, ``aim+apc shared``: prefix caching on, every request uses the same k
  demonstrations (one fixed set). The shared prefix is computed once before the measurement, as in a
  server that has served the set before, and its KV blocks are shared by the concurrent requests;
* ``raw+apc pool``, ``aim+apc pool``: prefix caching on, each request draws its own k demonstrations
  from a pool (as per-query selection does), fresh draws every run: prefixes rarely repeat.

Two decoders behind LLaVA-1.5's image geometry (576 image tokens per image): the tiny random one
(2 layers, hidden 128) and SmolLM2-135M (30 layers, hidden 576, aim-mini's real decoder). Fused
tokens come from the identity projector: speed does not depend on the projector's weights.

    .venv/bin/python -m bench.arms            # writes bench/out/arms.{csv,md,png}
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.models import build_llava15_geometry, build_llava15_smollm2
from bench.shots import demonstration, query, shape_image
from projector.backbone import Backbone, QueryEmbedding, load_backbone
from projector.encoder import AimEncoder
from projector.projector import Projector
from projector.prompt import assemble_prompt
from projector.templates import separated
from server.engines.base import SamplingOptions
from server.engines.vllm_engine import VllmEngine
from server.settings import MiB, Settings

ARMS = ("aim", "raw", "raw+apc shared", "raw+apc pool", "aim+apc shared", "aim+apc pool")
IMAGE_SIZE = 336


@dataclass
class Cell:
    decoder: str
    arm: str
    k: int
    c: int
    prompt_tokens: float  # mean over the requests
    cached_share: float  # prompt tokens served from the prefix cache, over all prompt tokens
    ttft_ms: float  # median over runs of the mean over requests
    tok_s: float  # median over runs of output tokens / wall time
    runs: int


@dataclass
class Material:
    fused: list[torch.Tensor]
    raw: list[torch.Tensor]
    queries: list[QueryEmbedding]


def prepare(backbone: Backbone, pool: int, n_queries: int) -> Material:
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    encoder = AimEncoder(backbone, projector, dtype=backbone.dtype)
    m = Material([], [], [])
    images_texts = []
    for i in range(pool):
        color, shape, text = demonstration(i)
        images_texts.append((shape_image(IMAGE_SIZE, color, shape), f"{text} (#{i})"))
    for fused in encoder.encode_demonstrations(images_texts, batch_size=8):
        m.fused.append(fused.fused_tokens)
    for image, text in images_texts:  # the raw segment: "<image>\n{text}" as the MLLM reads it, no BOS
        m.raw.append(encoder.embed_query(image, separated(text)).body)
    for i in range(n_queries):
        color, shape, text = query(i)
        m.queries.append(
            encoder.embed_query(shape_image(IMAGE_SIZE, color, shape, "lightgray"), text, few_shot=True)
        )
    return m


def prompts(
    m: Material, arm: str, k: int, c: int, rng: random.Random, *, warm_up: bool = False
) -> list[torch.Tensor]:
    """The prompts of one run: queries 0..c-1, or (``warm_up``) the last query, which no run measures,
    so that warming a shared prefix caches the demonstrations and not a measured query."""
    demos = m.fused if arm.startswith("aim") else m.raw
    out = []
    for q in [len(m.queries) - 1] if warm_up else range(c):
        chosen = rng.sample(range(len(demos)), k) if arm.endswith("pool") else list(range(k))
        out.append(assemble_prompt(m.queries[q], [demos[i] for i in chosen]))
    return out


async def one(engine: VllmEngine, embeds: torch.Tensor, max_tokens: int) -> tuple[float, int, int]:
    """(seconds to first token, output tokens, cached prompt tokens); EOS ignored: equal lengths."""
    options = SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start, first, out = time.perf_counter(), None, None
    async for out in engine.generate(embeds, options, f"arms-{uuid.uuid4().hex}"):
        if first is None and out.token_ids:
            first = time.perf_counter() - start
    assert out is not None
    return first or 0.0, len(out.token_ids), out.num_cached_tokens


async def run_arm(engine, m, decoder, arm, k, c, args, rng) -> Cell:
    if "shared" in arm:  # the set was served before: its prefix is in the cache
        await one(engine, prompts(m, arm, k, 1, rng, warm_up=True)[0], 1)
    ttfts, rates, cached, total, tokens = [], [], 0, 0, []
    for _ in range(args.repeats):
        batch = prompts(m, arm, k, c, rng)
        start = time.perf_counter()
        results = await asyncio.gather(*(one(engine, p, args.max_tokens) for p in batch))
        wall = time.perf_counter() - start
        ttfts.append(statistics.mean(r[0] for r in results) * 1000)
        rates.append(sum(r[1] for r in results) / wall)
        cached += sum(r[2] for r in results)
        total += sum(p.shape[0] for p in batch)
        tokens += [p.shape[0] for p in batch]
    return Cell(
        decoder, arm, k, c, statistics.mean(tokens), cached / total, statistics.median(ttfts),
        statistics.median(rates), args.repeats,
    )  # fmt: skip


async def bench_decoder(name: str, backbone: Backbone, args) -> list[Cell]:
    t0 = time.perf_counter()
    m = prepare(backbone, args.pool, max(args.concurrency) + 1)  # + the warm-up query
    print(f"{name}: prepared {args.pool} demonstrations in {time.perf_counter() - t0:.0f} s", flush=True)
    cells: list[Cell] = []
    for apc in (False, True):
        settings = Settings(
            cache_dir=args.cache_dir,
            engine="vllm",
            enforce_eager=True,
            kv_cache_memory_bytes=args.kv_cache_mib * MiB,
            max_num_seqs=max(args.concurrency),
            max_model_len=args.max_model_len,
            enable_prefix_caching=apc,
        )
        engine = VllmEngine(settings, backbone, max_model_len=args.max_model_len)
        await engine.start()
        try:
            rng = random.Random(0)
            await one(engine, prompts(m, "raw", 1, 1, rng, warm_up=True)[0], 4)  # warm-up
            arms = [a for a in ARMS if ("apc" in a) == apc and a in args.arms]
            for k in args.ks:
                for c in args.concurrency:
                    for arm in arms:
                        if arm.endswith("pool") and k == 0:
                            continue  # no demonstrations: the same prompt as "shared"
                        if apc:
                            await engine.reset_prefix_cache()  # every arm starts from an empty cache
                        cell = await run_arm(engine, m, name, arm, k, c, args, rng)
                        cells.append(cell)
                        print(
                            f"{name:8} {arm:15} k={k:2} c={c}: {cell.prompt_tokens:7.0f} tokens, "
                            f"cached {cell.cached_share:5.1%}, TTFT {cell.ttft_ms:7.0f} ms, "
                            f"{cell.tok_s:6.1f} tok/s",
                            flush=True,
                        )
        finally:
            await engine.shutdown()
    return cells


# -- report -------------------------------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


def report(cells: list[Cell], args, meta: dict) -> str:
    lines = [
        f"vLLM-CPU, enforce_eager, float32, LLaVA-1.5 geometry (576 image tokens per image), "
        f"{args.max_tokens} output tokens per request (EOS ignored), {args.repeats} run(s) per cell "
        f"(median), pool of {args.pool} demonstrations for the per-request arms, prefix cache emptied "
        f"before each arm; {meta['threads']} torch threads on a shared 2-core machine (noisy: compare "
        "ratios within a run). tok/s: output tokens over wall time; cached: prompt tokens served "
        "from the prefix cache.",
        "",
        "| decoder | arm | k | c | prompt tokens | cached | TTFT ms | tok/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for x in cells:
        lines.append(
            f"| {x.decoder} | {x.arm} | {x.k} | {x.c} | {x.prompt_tokens:,.0f} | {x.cached_share:.0%} | "
            f"{x.ttft_ms:,.0f} | {x.tok_s:,.1f} |"
        )
    at = {(x.decoder, x.arm, x.k, x.c): x for x in cells}
    lines += [
        "",
        "AIM against each arm, same decoder, k and c (output throughput AIM ÷ arm; prompt AIM ÷ raw):",
        "",
        "| decoder | k | c | AIM prompt ÷ raw | AIM tok/s ÷ raw | ÷ raw+apc shared | ÷ raw+apc pool | "
        "AIM+apc shared ÷ raw+apc shared | AIM+apc pool ÷ raw+apc pool |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (decoder, arm, k, c), aim in at.items():
        if arm != "aim" or k == 0:
            continue

        def get(a: str) -> Cell | None:
            return at.get((decoder, a, k, c))  # noqa: B023 - used at once

        raw, shared, pool = get("raw"), get("raw+apc shared"), get("raw+apc pool")
        aim_shared, aim_pool = get("aim+apc shared"), get("aim+apc pool")
        lines.append(
            f"| {decoder} | {k} | {c} | "
            + " | ".join(
                [
                    f"{aim.prompt_tokens / raw.prompt_tokens:.1%}" if raw else "—",
                    ratio(aim.tok_s, raw and raw.tok_s),
                    ratio(aim.tok_s, shared and shared.tok_s),
                    ratio(aim.tok_s, pool and pool.tok_s),
                    ratio(aim_shared and aim_shared.tok_s, shared and shared.tok_s),
                    ratio(aim_pool and aim_pool.tok_s, pool and pool.tok_s),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decoders = list(dict.fromkeys(x.decoder for x in cells))
    cs = sorted({x.c for x in cells})
    fig, axes = plt.subplots(len(decoders), len(cs), figsize=(6 * len(cs), 4 * len(decoders)), squeeze=False)
    for i, decoder in enumerate(decoders):
        for j, c in enumerate(cs):
            ax = axes[i][j]
            for arm in ARMS:
                pts = sorted((x.k, x.tok_s) for x in cells if (x.decoder, x.arm, x.c) == (decoder, arm, c))
                if pts:
                    style = "-" if arm.startswith("aim") else "--"
                    ax.plot(*zip(*pts, strict=True), style, marker="o", label=arm)
            ax.set_title(f"{decoder}, c={c}: output tokens/s")
            ax.set_xlabel("demonstrations k")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("AIM (solid) vs raw few-shot prompts (dashed), with and without vLLM prefix caching")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.arms", description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--decoders", default="tiny,smollm2-135m")
    parser.add_argument("--arms", type=lambda s: s.split(","), default=list(ARMS))
    parser.add_argument("--ks", type=ints, default=[0, 4, 16])
    parser.add_argument("--concurrency", type=ints, default=[1, 8])
    parser.add_argument("--pool", type=int, default=32, help="demonstrations the per-request sets draw from")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=12288)
    parser.add_argument("--kv-cache-mib", type=int, default=3072)
    parser.add_argument("--cache-dir", type=Path, default=Path(".aim-cache/bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    v15 = build_llava15_geometry(args.cache_dir / "models" / "llava15-geometry")
    builders = {
        "tiny": lambda: v15,
        "smollm2-135m": lambda: build_llava15_smollm2(args.cache_dir / "models" / "llava15-smollm2", v15),
    }
    cells: list[Cell] = []
    for name in args.decoders.split(","):
        backbone = load_backbone(builders[name](), dtype=torch.float32, device="cpu")
        cells += asyncio.run(bench_decoder(name, backbone, args))
        del backbone
    meta = {"threads": torch.get_num_threads()}
    text = report(cells, args, meta) + f"\nTotal time of this run: {time.perf_counter() - started:.0f} s.\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "arms.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(cells[0])))
        writer.writeheader()
        writer.writerows(asdict(x) for x in cells)
    (args.out / "arms.md").write_text(text)
    plot(cells, args.out / "arms.png")
    print(f"wrote {args.out}/arms.csv, arms.md, arms.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
