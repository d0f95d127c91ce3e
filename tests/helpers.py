"""Builders shared by the tests: images, settings, an app driven in-process, Redis clean-up.

Fixtures live in ``conftest.py``; everything a test module imports comes from here.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import redis
from PIL import Image, ImageDraw

from server.app import create_app
from server.settings import Settings

# CI points this at the local Redis so integration tests run on both deployments.
EXTERNAL_REDIS_URL = os.environ.get("AIM_REDIS_URL") or None


def png_bytes(color: str = "red", size: tuple[int, int] = (64, 64), shape: str = "circle") -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    else:
        draw.rectangle(box, fill=color)
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
