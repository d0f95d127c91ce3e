"""How long per-query selection takes as a set grows: ``select: similar`` over 1k, 10k and 100k members.

    .venv/bin/python -m bench.select            # ~3 min; writes bench/out/select.md and select.png

Real store (an embedded redis-server in a temporary directory), records with aim-mini's hidden size
(576) and random image embeddings. "warm" is a query against an unchanged set (one GET of the set
version, a matrix-vector product and a top-k); "rebuild" is the first query after the set changed
(the members' ids and embeddings are read back, headers and embedding bytes only).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bank import DemonstrationBank, DemonstrationRecord, open_redis
from bank.selection import SimilarityIndex

OUT = Path(__file__).parent / "out"
HIDDEN = 576


async def measure(sizes: list[int], queries: int, k: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as data:
        connection = await open_redis(None, Path(data), durable_writes=False)
        try:
            bank = DemonstrationBank(connection.client, "5" * 16, hidden_size=HIDDEN)
            g = torch.Generator().manual_seed(0)
            stored = 0
            for size in sizes:
                while stored < size:  # grow one set to the next size
                    batch = [
                        DemonstrationRecord(id=f"{i:032x}", fused_tokens=torch.zeros(1, HIDDEN, dtype=torch.float16),
                                            text=f"t{i}", image_embedding=torch.randn(HIDDEN, generator=g))
                        for i in range(stored, min(size, stored + 1000))
                    ]  # fmt: skip
                    await bank.put_many(batch, set_name="grow")
                    stored += len(batch)
                index = SimilarityIndex()
                query = torch.randn(HIDDEN, generator=g)
                t0 = time.perf_counter()
                await index.most_similar(bank, "grow", query, k)
                rebuild = time.perf_counter() - t0
                warm = []
                for _ in range(queries):
                    q = torch.randn(HIDDEN, generator=g)
                    t0 = time.perf_counter()
                    await index.most_similar(bank, "grow", q, k)
                    warm.append(time.perf_counter() - t0)
                warm.sort()
                rows.append({"members": size, "rebuild_ms": rebuild * 1e3, "p50_ms": statistics.median(warm) * 1e3,
                             "p99_ms": warm[int(0.99 * (len(warm) - 1))] * 1e3})  # fmt: skip
                print(rows[-1], flush=True)
        finally:
            await connection.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("-k", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a server handles many requests at once; one core per ranking
    rows = asyncio.run(measure([int(s) for s in args.sizes.split(",")], args.queries, args.k))
    lines = ["| members | warm p50 ms | warm p99 ms | rebuild ms |", "|---:|---:|---:|---:|"]
    lines += [
        f"| {r['members']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rebuild_ms']:.0f} |" for r in rows
    ]
    text = "\n".join(lines) + f"\n\nk = {args.k}, {args.queries} queries per size, one torch thread.\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "select.md").write_text(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog([r["members"] for r in rows], [r["p50_ms"] for r in rows], "o-", label="warm p50")
    ax.loglog([r["members"] for r in rows], [r["rebuild_ms"] for r in rows], "s--", label="rebuild")
    ax.axhline(5, color="gray", lw=0.8, ls=":", label="5 ms target")
    ax.set_xlabel("members in the set")
    ax.set_ylabel("ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "select.png", dpi=110)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
