"""Builders shared by the tests: images, settings, an app driven in-process, Redis clean-up.

Fixtures live in ``conftest.py``; everything a test module imports comes from here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
import torch
from PIL import Image

from bank import DemonstrationRecord
from bank.embedded import redis_server_binary
from projector.backbone import Backbone
from projector.training.scenes import shape_image
from server.app import create_app
from server.settings import Settings

# The checkout these tests belong to. Servers started as processes import its code (PYTHONPATH), not
# whatever copy of the project is installed: the same tree in CI, the right one in any other worktree.
REPO_ROOT = Path(__file__).resolve().parents[1]

# CI points this at the local Redis so integration tests run on both deployments.
EXTERNAL_REDIS_URL = os.environ.get("AIM_REDIS_URL") or None


def same_text(served: str, backbone: Backbone, tokens: list[int]) -> bool:
    """The served text is the decoded tokens. vLLM's incremental detokenizer holds back a last incomplete
    UTF-8 sequence, which the random tiny models often end on; that is the one difference allowed."""
    return served.rstrip("\ufffd") == backbone.tokenizer.decode(tokens, skip_special_tokens=True).rstrip(
        "\ufffd"
    )


def png_bytes(color: str = "red", size: tuple[int, int] = (64, 64), shape: str = "circle") -> bytes:
    """A PNG of one shape: a circle, or else a rectangle filling the same box."""
    image = shape_image(size, color, "circle" if shape == "circle" else "rectangle")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def png_b64(color: str = "red", size: tuple[int, int] = (64, 64), shape: str = "circle") -> str:
    return base64.b64encode(png_bytes(color, size, shape)).decode()


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def clear_prefix(url: str, pattern: str = "aim:*") -> None:
    """Remove what earlier runs left in a shared Redis (only this project's keys)."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=pattern, count=1000):
        client.delete(key)
    client.close()


def make_settings(
    tiny_model_dir: Path, data_dir: Path, redis_url: str | None = None, **overrides
) -> Settings:
    values = dict(
        model=str(tiny_model_dir),
        engine="transformers",
        redis_url=redis_url,
        data_dir=data_dir,
        cache_dir=data_dir / "cache",
        batch_wait_ms=20,
    )
    values.update(overrides)
    return Settings(**values)


def count_calls(monkeypatch, owner: object, name: str) -> list[tuple]:
    """Wrap the real ``owner.name`` so each call's arguments are recorded; it still does its work."""
    real = getattr(owner, name)
    calls: list[tuple] = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


async def bank_snapshot(client, prefix: str) -> dict[bytes, tuple[str, object, int]]:
    """Every key under ``prefix`` with its type, content and TTL in ms: what any write would change."""
    snapshot: dict[bytes, tuple[str, object, int]] = {}
    for key in sorted([k async for k in client.scan_iter(match=f"{prefix}*")]):
        kind = (await client.type(key)).decode()
        if kind == "string":
            value: object = await client.get(key)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        else:
            value = sorted(await client.smembers(key))
        snapshot[key] = (kind, value, await client.pttl(key))
    return snapshot


class RunningApp:
    def __init__(self, app, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def state(self):
        return self.app.state.aim


async def start_app(settings: Settings) -> AsyncIterator[RunningApp]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://aim.test", timeout=120) as client:
            yield RunningApp(app, client)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    base_url: str
    process: subprocess.Popen
    log_path: Path


STOP_TIMEOUT_S = 30


@contextmanager
def served(work: Path, env: dict[str, str], *, start_timeout: float) -> Iterator[ServerProcess]:
    """``aim serve`` as a process on a free loopback port, with only the given ``AIM_*`` settings,
    running this checkout's code, ready (``/ready`` 200) when yielded; stopped on exit if still running
    (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``)."""
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIM_")},
        "AIM_PORT": str(port),
        "AIM_DATA_DIR": str(work / "data"),
        "AIM_CACHE_DIR": str(work / "cache"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
        **env,
    }
    log_path = work / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            cwd=work,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
                    )
                try:
                    if httpx.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"server not ready in {start_timeout}s:\n{log_path.read_text()[-4000:]}"
                    )
                time.sleep(0.5)
            yield ServerProcess(base, proc, log_path)
        finally:
            if proc.poll() is None:
                # SIGTERM first: a killed server cannot stop its vLLM EngineCore process, which then
                # outlives it (found as an orphan holding ~1 GB after a suite run).
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


EPISODE_COLORS = ["red", "blue", "green", "yellow"]


def write_episodes(tmp_path: Path, n: int = 40, seed: int = 0) -> Path:
    """Colour-naming episodes in both JSONL layouts; images as files and as base64."""
    rng = random.Random(seed)
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for c in EPISODE_COLORS:
        for shape in ("circle", "square"):
            (images / f"{c}-{shape}.png").write_bytes(png_bytes(c, shape=shape))
    lines = []
    for e in range(n):
        picks = [(rng.choice(EPISODE_COLORS), rng.choice(["circle", "square"])) for _ in range(3)]
        if e % 2 == 0:
            demos = [{"image": f"images/{c}-{s}.png", "text": f"Colour: {c}"} for c, s in picks[:2]]
            c, s = picks[2]
            lines.append({"demonstrations": demos, "query": {"image": png_b64(c, shape=s), "text": "Colour:"},
                          "answer": c})  # fmt: skip
        else:
            for c, s in picks[:2]:
                lines.append({"episode": f"e{e}", "image": f"images/{c}-{s}.png", "text": f"Colour: {c}"})
            c, s = picks[2]
            lines.append({"episode": f"e{e}", "image": f"data:image/png;base64,{png_b64(c, shape=s)}",
                          "text": "Colour:", "answer": c})  # fmt: skip
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def demo_record(i: int, dtype: torch.dtype = torch.float32, *, hidden: int = 16) -> DemonstrationRecord:
    """A deterministic stored demonstration (random fused tokens seeded by ``i``), for bank tests."""
    g = torch.Generator().manual_seed(i)
    return DemonstrationRecord(
        id=f"{i:032x}",
        fused_tokens=torch.randn(3 + i, hidden, generator=g).to(dtype),
        text=f"text {i}",
        metadata={"i": i},
        image_tokens=16,
        raw_tokens=20 + i,
    )


class PrivateRedis:
    """A redis-server of our own on a free loopback port, with an append-only file, to stop at will."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.extra = list(extra)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--appendonly", "yes", "--save", "", *self.extra],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.02)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
