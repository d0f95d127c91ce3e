"""Requests inside the limits cost bounded memory and never stall the event loop.

Before the limits, a 257-byte 60000x1 PNG cost +2.3 GB (the processor's resize blew it up), and 32
near-limit 1-bit PNGs in one request cost +5.3 GB and froze /health for 5-9 s. Memory is measured as the
peak RSS of this process (the app runs in it) over the request, sampled every 5 ms; the margins are
generous because the machine is shared and noisy, but each is far below what the old behaviour cost.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
import time

import pytest
from PIL import Image

from tests.helpers import RunningApp, make_settings, start_app

MB = 1024 * 1024
RSS_BUDGET = 500 * MB
HEALTH_BUDGET_S = 1.0


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    def __enter__(self) -> PeakRss:
        self.start, self.peak, self._stop = rss(), rss(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def delta(self) -> int:
        return self.peak - self.start


def one_bit_png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("1", (width, height), 1).save(buf, "PNG")  # compresses to almost nothing
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
async def app(tiny_model_dir, tmp_path_factory):
    # Defaults except a body limit that admits the test's bodies (they are small anyway).
    async for running in start_app(make_settings(tiny_model_dir, tmp_path_factory.mktemp("bounded"))):
        yield running


async def timed_health(app: RunningApp, stop: asyncio.Event) -> float:
    worst = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        assert (await app.client.get("/health")).status_code == 200
        worst = max(worst, time.perf_counter() - t0)
        await asyncio.sleep(0.02)
    return worst


async def measured(app: RunningApp, path: str, body: dict):
    stop = asyncio.Event()
    health = asyncio.create_task(timed_health(app, stop))
    with PeakRss() as memory:
        r = await app.client.post(path, json=body)
    stop.set()
    return r, memory.delta, await health


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        # The 60000x1 strip: refused from its header, nothing decoded.
        ("/generate", {"query": {"text": "x", "image": one_bit_png(60000, 1)}, "max_tokens": 1}, 400),
        # 32 images of 6000x6000 (36 M pixels each, under the per-image limit): refused at the second one,
        # before any is decoded, by the request's 64 M-pixel budget.
        (
            "/demonstrations",
            {"items": [{"image": one_bit_png(6000, 6000), "text": f"d{i}"} for i in range(32)]},
            413,
        ),
        # Inside every limit: two 5400x5400 images (58 M pixels together) decoded, resized and encoded.
        (
            "/demonstrations",
            {"items": [{"image": one_bit_png(5400, 5400 - i), "text": f"big {i}"} for i in range(2)]},
            200,
        ),
    ],
    ids=["strip", "thirty-two-near-limit", "inside-the-limits"],
)
async def test_image_work_is_bounded_and_health_stays_responsive(app: RunningApp, path, body, status):
    r, rss_delta, worst_health = await measured(app, path, body)
    print(
        f"{path} -> {r.status_code}: peak RSS +{rss_delta / MB:.0f} MB, slowest /health {worst_health * 1e3:.0f} ms"
    )
    assert r.status_code == status, r.text
    assert rss_delta < RSS_BUDGET, f"peak RSS grew by {rss_delta / MB:.0f} MB"
    assert worst_health < HEALTH_BUDGET_S, f"/health took {worst_health:.2f} s during the request"
