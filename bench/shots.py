"""AIM fused-token prompts vs raw multimodal few-shot prompts, side by side on one vLLM engine.

For k = 0, 1, 2, 4, 8, 16 demonstrations and two image geometries (LLaVA-1.5: 576 image tokens per
image; LLaVA-NeXT any-resolution at 672 x 672: 2,928), build for the same queries

* **aim**: ``[BOS, fused tokens of each demonstration, query]``: one fused token per demonstration
  text token, image tokens dropped;
* **raw**: ``[BOS, each demonstration's "<image>\\n{text}" embedded with its image spliced in by the
  backbone's own forward, query]``: what a multimodal few-shot prompt costs without AIM;

and measure on the same engine: prompt tokens, peak KV-cache memory, time to first token and output
throughput, at concurrency 1 and 8. Prompts that do not fit ``max_model_len`` are reported as
"exceeds context" rows.

Peak memory is the KV cache held by the requests at the busiest engine step: vLLM's scheduler reports
the share of KV blocks in use after every step (read through the engine's stat logger), times the
block size in bytes. That is the memory a prompt costs beyond the weights, the quantity that bounds
how many requests fit on an accelerator. Process RSS would be dominated by the pre-allocated cache
and the Python heap and would not move with the prompt. Granularity: one block = 128 tokens on CPU.

Run from the repository root (vLLM spawns workers, so this only runs under ``__main__``):

    .venv/bin/python -m bench.shots
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from bench.shots_report import CONCURRENCIES, Row, plot, table
from projector.backbone import Backbone, QueryEmbedding
from projector.encoder import AimEncoder
from projector.projector import Projector
from projector.prompt import assemble_prompt
from projector.templates import separated
from server.engines.base import SamplingOptions
from server.engines.vllm_engine import VllmEngine  # vLLM itself is imported when the engine starts
from server.settings import MiB, Settings

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "pink", "brown", "gray"]
SHAPES = ["circle", "square", "triangle"]


# -- data ---------------------------------------------------------------------------------------------
def shape_image(size: int, color: str, shape: str, background: str = "white") -> Image.Image:
    from projector.training.scenes import shape_image as draw

    return draw((size, size), color, shape, background)


def demonstration(i: int) -> tuple[str, str, str]:
    color, shape = COLORS[i % len(COLORS)], SHAPES[(i // len(COLORS) + i) % len(SHAPES)]
    return color, shape, f"Question: What color is the {shape}? Answer: {color}"


def query(i: int) -> tuple[str, str, str]:
    color, shape = COLORS[(3 * i + 1) % len(COLORS)], SHAPES[i % len(SHAPES)]
    return color, shape, f"Question: What color is the {shape}? Answer:"


@dataclass
class Setting:
    name: str
    image_size: int
    backbone: Backbone
    fused: list[torch.Tensor] = field(default_factory=list)  # per demonstration, AIM
    raw: list[torch.Tensor] = field(default_factory=list)  # per demonstration, image spliced in
    queries: list[QueryEmbedding] = field(default_factory=list)
    image_tokens: int = 0

    def prompt(self, kind: str, k: int, q: int) -> torch.Tensor:
        demos = (self.fused if kind == "aim" else self.raw)[:k]
        query = self.queries[q]
        return assemble_prompt(query, demos)


def prepare(name: str, backbone: Backbone, image_size: int, k_max: int, n_queries: int) -> Setting:
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    encoder = AimEncoder(backbone, projector, dtype=backbone.dtype)
    setting = Setting(name, image_size, backbone)
    for i in range(k_max):
        color, shape, text = demonstration(i)
        image = shape_image(image_size, color, shape)
        fused = encoder.encode_demonstration(image, text)
        setting.fused.append(fused.fused_tokens)
        # The raw segment: the demonstration read the way the MLLM reads any "<image>\n{text}" prompt,
        # minus the BOS that opens the whole prompt once.
        embedded = encoder.embed_query(image, separated(text))
        assert embedded.body.shape[0] == fused.raw_tokens, (embedded.body.shape, fused.raw_tokens)
        setting.raw.append(embedded.body)
        setting.image_tokens = fused.image_tokens
    for i in range(n_queries):
        color, shape, text = query(i)
        setting.queries.append(
            encoder.embed_query(shape_image(image_size, color, shape, "lightgray"), text, few_shot=True)
        )
    return setting


# -- measurement --------------------------------------------------------------------------------------
async def one_request(engine: VllmEngine, embeds: torch.Tensor, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to first token, seconds to last, output tokens). EOS is ignored so that every prompt
    produces the same number of tokens: otherwise a random model's early EOS would decide throughput."""
    options = SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    first = None
    tokens = 0
    async for out in engine.generate(embeds, options, f"bench-{uuid.uuid4().hex}"):
        tokens = len(out.token_ids)
        if first is None and tokens:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start, tokens


async def measure(
    engine: VllmEngine, prompts: list[torch.Tensor], max_tokens: int
) -> tuple[float, float, float]:
    """Run ``prompts`` at once: (peak KV MiB, mean TTFT ms, output tokens/s over the wall time)."""
    engine.reset_peaks()
    start = time.perf_counter()
    results = await asyncio.gather(*(one_request(engine, p, max_tokens) for p in prompts))
    wall = time.perf_counter() - start
    await asyncio.sleep(0)  # let the output handler record the last step's stats
    peak = engine.stats().peak_kv_cache_bytes / MiB
    ttft = statistics.mean(r[0] for r in results) * 1000
    return peak, ttft, sum(r[2] for r in results) / wall


async def bench(args) -> tuple[list[Row], dict]:
    from bench.models import load_bench_backbones

    t0 = time.perf_counter()
    v15, nxt = load_bench_backbones(args.cache_dir / "models")
    k_max = max(args.ks)
    n_queries = max(CONCURRENCIES)
    settings_ = [prepare("LLaVA-1.5 (576/img)", v15, 336, k_max, n_queries)]
    if not args.skip_next:
        settings_.append(prepare("LLaVA-NeXT (2,928/img)", nxt, 672, k_max, n_queries))
    t_prepare = time.perf_counter() - t0

    engine_settings = Settings(
        cache_dir=args.cache_dir,
        engine="vllm",
        enforce_eager=True,
        kv_cache_memory_bytes=args.kv_cache_mib * MiB,
        max_num_seqs=max(CONCURRENCIES),
        max_model_len=args.max_model_len,
        # Repeated prompts would be served from the prefix cache and the benchmark would time the
        # cache, not the prompt. (AIM's demonstration prefixes do hit it in production; see the tests.)
        enable_prefix_caching=False,
    )
    t0 = time.perf_counter()
    # The decoder weights are shared by both geometries: one engine serves every prompt.
    engine = VllmEngine(engine_settings, v15, max_model_len=args.max_model_len)
    rows: list[Row] = []
    try:
        await engine.start()
        t_start = time.perf_counter() - t0
        for _ in range(2):  # warm-up: first requests pay one-off allocation and kernel set-up
            await measure(engine, [settings_[0].prompt("raw", 1, q) for q in range(8)], args.max_tokens)
        t0 = time.perf_counter()
        for setting in settings_:
            for k in args.ks:
                cells: dict[str, tuple[Row, list[torch.Tensor]]] = {}
                for kind in ("aim", "raw"):
                    prompts = [setting.prompt(kind, k, q) for q in range(n_queries)]
                    row = Row(setting.name, kind, k, prompts[0].shape[0])
                    rows.append(row)
                    if max(p.shape[0] for p in prompts) + args.max_tokens > args.max_model_len:
                        row.exceeds = True
                    else:
                        cells[kind] = (row, prompts)
                for c in CONCURRENCIES:
                    runs: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in cells}
                    began = time.perf_counter()
                    # AIM and raw alternate, so load from other processes hits both alike; cheap cells
                    # repeat until they have run --min-seconds, since noise dominates short runs.
                    while True:
                        for kind, (_, prompts) in cells.items():
                            runs[kind].append(await measure(engine, prompts[:c], args.max_tokens))
                        n = min((len(r) for r in runs.values()), default=args.max_repeats)
                        if n >= args.max_repeats or (
                            n >= args.repeats and time.perf_counter() - began >= args.min_seconds
                        ):
                            break
                    for kind, (row, _) in cells.items():
                        row.runs[c] = len(runs[kind])
                        row.kv_mib[c] = max(r[0] for r in runs[kind])
                        row.ttft_ms[c] = statistics.median(r[1] for r in runs[kind])
                        row.tok_s[c] = statistics.median(r[2] for r in runs[kind])
                for row in rows[-2:]:
                    print(
                        f"{setting.name:24} {row.kind} k={row.k:2}: {row.prompt_tokens:6} tokens  "
                        + (
                            "exceeds context"
                            if row.exceeds
                            else "  ".join(
                                f"c={c}: {row.kv_mib[c]:.1f} MiB, TTFT {row.ttft_ms[c]:.0f} ms, "
                                f"{row.tok_s[c]:.0f} tok/s ({row.runs[c]} runs)"
                                for c in CONCURRENCIES
                            )
                        ),
                        flush=True,
                    )
        t_measure = time.perf_counter() - t0
    finally:
        await engine.shutdown()
    meta = {
        "prepare_s": t_prepare,
        "engine_start_s": t_start,
        "measure_s": t_measure,
        "kv_block_tokens": engine.kv_block_tokens,
        "kv_block_bytes": engine.kv_block_bytes,
        "prefill_tokens_per_step": engine.max_num_batched_tokens,
        "hidden": v15.hidden_size,
        "layers": v15.model.config.text_config.num_hidden_layers,
        "settings": [(s.name, s.image_tokens) for s in settings_],
    }
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2, 4, 8, 16])
    parser.add_argument("--max-model-len", type=int, default=16384)
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell at least (median reported)")
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, help="cheap cells repeat at least this long"
    )
    parser.add_argument("--max-repeats", type=int, default=15)
    parser.add_argument("--kv-cache-mib", type=int, default=1024)
    parser.add_argument("--skip-next", action="store_true", help="only the LLaVA-1.5 geometry")
    parser.add_argument("--cache-dir", type=Path, default=Path(".aim-cache/bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    rows, meta = asyncio.run(bench(args))
    text = table(rows, args, meta)
    total = time.perf_counter() - started
    text += (
        f"\nTimings of this run: models and embeddings {meta['prepare_s']:.0f} s, engine start "
        f"{meta['engine_start_s']:.0f} s, measurements {meta['measure_s']:.0f} s, total {total:.0f} s.\n"
    )
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shots.md").write_text(text)
    plot(rows, args, args.out / "shots.png")
    print(f"wrote {args.out / 'shots.md'} and {args.out / 'shots.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
