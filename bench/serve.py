"""Open-loop load against a running aim-serve: what a client sees, and what the server itself adds.

1. **Registration**: ``--pool`` new demonstrations (unique texts each run, so every one is encoded),
   ``--register-batch`` per ``POST /demonstrations``: demonstrations/s.
2. **Generation**: for each k and each demonstration mode, ``--requests`` ``/generate`` requests
   sent at a fixed arrival rate (``--rate`` per second, open loop: a request is sent on schedule whether
   or not earlier ones have finished), each with its own query image:

   * ``shared``: every request uses the same k demonstrations (one fixed set);
   * ``pool``: each request draws its own k from the registered pool (per-query selection).

   Every other request streams. Reported: output tokens/s over the run, time to first token (streamed
   requests), end-to-end latency p50/p99, and the **server overhead**: end-to-end minus the engine's
   own time, which the server reports per request in ``Server-Timing: engine;dur=<ms>`` (non-streamed
   requests).

    .venv/bin/aim serve &                                   # any model / engine
    .venv/bin/python -m bench.serve --url http://127.0.0.1:8000 --rate 2 --requests 16
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from projector.training.scenes import shape_image

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "pink", "brown", "gray"]
SHAPES = ["circle", "rectangle"]


def png_b64(color: str, shape: str, size: int = 224, background: str = "white") -> str:
    buf = io.BytesIO()
    shape_image((size, size), color, shape, background).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@dataclass
class Result:
    k: int
    mode: str
    requests: int
    rate: float
    tok_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    engine_p50_ms: float
    overhead_p50_ms: float
    overhead_share_p50: float  # median over requests of (e2e - engine) / e2e


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def register(client: httpx.AsyncClient, n: int, per_request: int) -> tuple[list[str], float]:
    salt = f"{time.time():.6f}"
    items = [
        {
            "image": png_b64(COLORS[i % len(COLORS)], SHAPES[(i // len(COLORS)) % 2]),
            "text": f"Question: What color is the shape? Answer: {COLORS[i % len(COLORS)]} ({salt}/{i})",
        }
        for i in range(n)
    ]
    ids: list[str] = []
    start = time.perf_counter()
    for i in range(0, n, per_request):
        r = await client.post("/demonstrations", json={"items": items[i : i + per_request]})
        r.raise_for_status()
        ids += [x["id"] for x in r.json()["items"]]
    return ids, n / (time.perf_counter() - start)


async def one(client: httpx.AsyncClient, body: dict) -> dict:
    start = time.perf_counter()
    if not body.get("stream"):
        r = await client.post("/generate", json=body)
        r.raise_for_status()
        e2e = time.perf_counter() - start
        engine = float(r.headers["server-timing"].split("dur=")[1]) / 1000
        return {"e2e": e2e, "engine": engine, "tokens": r.json()["usage"]["completion_tokens"]}
    first, tokens = None, 0
    async with client.stream("POST", "/generate", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("text"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"e2e": time.perf_counter() - start, "ttft": first, "tokens": tokens}


async def load(client: httpx.AsyncClient, ids: list[str], k: int, mode: str, args, rng) -> Result:
    bodies = []
    for i in range(args.requests):
        chosen = rng.sample(ids, k) if mode == "pool" else ids[:k]
        bodies.append(
            {
                "query": {
                    "image": png_b64(COLORS[(3 * i + 1) % 10], SHAPES[i % 2], background="lightgray"),
                    "text": "Question: What color is the shape? Answer:",
                },
                "demonstrations": {"ids": chosen} if k else None,
                "max_tokens": args.max_tokens,
                "stream": i % 2 == 1,
            }
        )
    start = time.perf_counter()

    async def scheduled(i: int, body: dict) -> dict:
        await asyncio.sleep(max(0.0, start + i / args.rate - time.perf_counter()))
        return await one(client, {k_: v for k_, v in body.items() if v is not None})

    results = await asyncio.gather(*(scheduled(i, b) for i, b in enumerate(bodies)))
    wall = time.perf_counter() - start
    e2e = [r["e2e"] * 1000 for r in results]
    ttft = [r["ttft"] * 1000 for r in results if r.get("ttft") is not None]
    plain = [r for r in results if "engine" in r]
    overhead = [(r["e2e"] - r["engine"]) * 1000 for r in plain]
    share = [(r["e2e"] - r["engine"]) / r["e2e"] for r in plain]
    return Result(
        k, mode, len(results), args.rate, sum(r["tokens"] for r in results) / wall,
        pct(ttft, 0.5), pct(ttft, 0.99), pct(e2e, 0.5), pct(e2e, 0.99),
        statistics.median(r["engine"] * 1000 for r in plain), statistics.median(overhead),
        statistics.median(share),
    )  # fmt: skip


def report(results: list[Result], reg_rate: float, args) -> str:
    lines = [
        f"Server {args.url}; {args.requests} requests per row at {args.rate:g}/s (open loop), "
        f"{args.max_tokens} output tokens at most, every other request streamed. Registration: "
        f"{args.pool} new demonstrations, {args.register_batch} per request: **{reg_rate:.2f} "
        "demonstrations/s**.",
        "",
        "| k | demonstrations | tok/s | TTFT p50 / p99 ms | e2e p50 / p99 ms | engine p50 ms | "
        "overhead p50 ms | overhead share p50 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.k} | {r.mode} | {r.tok_s:.1f} | {r.ttft_p50_ms:,.0f} / {r.ttft_p99_ms:,.0f} | "
            f"{r.e2e_p50_ms:,.0f} / {r.e2e_p99_ms:,.0f} | {r.engine_p50_ms:,.0f} | {r.overhead_p50_ms:,.0f} | "
            f"{r.overhead_share_p50:.1%} |"
        )
    return "\n".join(lines) + "\n"


async def main_async(args) -> str:
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=args.url, timeout=600) as client:
        (await client.get("/ready")).raise_for_status()
        ids, reg_rate = await register(client, args.pool, args.register_batch)
        print(f"registered {len(ids)} demonstrations: {reg_rate:.2f}/s", flush=True)
        await one(client, {"query": {"text": "warm up"}, "max_tokens": 2})
        results = []
        for k in args.ks:
            for mode in ("shared", "pool") if k else ("shared",):
                result = await load(client, ids, k, mode, args, rng)
                results.append(result)
                print(asdict(result), flush=True)
    text = report(results, reg_rate, args)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "serve.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    (args.out / "serve.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second (open loop)")
    parser.add_argument("--requests", type=int, default=16, help="per row")
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[0, 4, 16])
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--register-batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    print(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
