"""Integration tests of the vLLM engine on the tiny LLaVA: real vLLM (CPU build), real reference engine.

One vLLM engine for the module (its start costs about 20 s on CPU); everything it is asked to prove
is read from vLLM's own state and statistics, not from timings.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time

import pytest
import pytest_asyncio
import torch
from PIL import Image, ImageDraw

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

from projector.backbone import load_backbone  # noqa: E402
from projector.encoder import AimEncoder  # noqa: E402
from projector.models.tiny import build_tiny_llava  # noqa: E402
from projector.projector import Projector  # noqa: E402
from server.engines.base import EngineError, SamplingOptions  # noqa: E402
from server.engines.transformers_engine import TransformersEngine  # noqa: E402
from server.settings import MiB, Settings  # noqa: E402
from tests.helpers import same_text  # noqa: E402

MAX_MODEL_LEN = 2048
GREEDY = SamplingOptions(max_tokens=12, temperature=0.0)

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "teal", "pink"]
SHAPES = ["circle", "square", "triangle"]


def shape_image(color: str, shape: str, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon(
            [(size // 2, size // 5), (size // 5, size * 4 // 5), (size * 4 // 5, size * 4 // 5)], fill=color
        )
    return image


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    model_dir = build_tiny_llava(tmp_path_factory.mktemp("tiny") / "tiny-llava")
    return load_backbone(model_dir, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def encoder(backbone):
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    return AimEncoder(backbone, projector, dtype=backbone.dtype)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(
        cache_dir=tmp_path_factory.mktemp("cache"),
        engine="vllm",
        enforce_eager=True,
        kv_cache_memory_bytes=256 * MiB,
        max_num_seqs=16,
        max_model_len=MAX_MODEL_LEN,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vllm_engine(settings, backbone):
    from server.engines.vllm_engine import VllmEngine

    engine = VllmEngine(settings, backbone, max_model_len=MAX_MODEL_LEN)
    try:
        await engine.start()
        yield engine
    finally:
        await engine.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def reference(settings, backbone):
    engine = TransformersEngine(settings, backbone, max_model_len=MAX_MODEL_LEN)
    try:
        await engine.start()
        yield engine
    finally:
        await engine.shutdown()


# -- prompts ------------------------------------------------------------------------------------------
def demonstrations(encoder, n: int, *, words: int = 3, offset: int = 0) -> list[torch.Tensor]:
    fused = []
    for i in range(offset, offset + n):
        color, shape = COLORS[i % len(COLORS)], SHAPES[i % len(SHAPES)]
        text = f"What shape is in the image? The answer is a {color} {shape}." + " many" * words
        fused.append(encoder.encode_demonstration(shape_image(color, shape), text).fused_tokens)
    return fused


def prompt(encoder, demos: list[torch.Tensor], query_index: int) -> torch.Tensor:
    color, shape = COLORS[query_index % len(COLORS)], SHAPES[(query_index + 1) % len(SHAPES)]
    query = encoder.embed_query(
        shape_image(color, shape), f"Question {query_index}: what color is the {shape}?"
    )
    return torch.cat([query.prefix, *demos, query.body])


async def run(engine, embeds: torch.Tensor, options: SamplingOptions, request_id: str):
    last = None
    async for out in engine.generate(embeds, options, request_id):
        last = out
    assert last is not None and last.finished
    return last


@pytest.fixture(scope="module")
def prompts(encoder) -> list[torch.Tensor]:
    """Zero-shot and few-shot prompts (0, 1, 2, 4 demonstrations), two queries each."""
    demos = demonstrations(encoder, 4)
    return [prompt(encoder, demos[:k], q) for k in (0, 1, 2, 4) for q in (0, 1)]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def expected(reference, prompts) -> list[list[int]]:
    # One reference request at a time: the reference's own batching is not what is under test.
    return [(await run(reference, p, GREEDY, f"ref-{i}")).token_ids for i, p in enumerate(prompts)]


# -- tests --------------------------------------------------------------------------------------------
async def test_health_and_model_len(vllm_engine):
    await vllm_engine.check_health()
    assert vllm_engine.name == "vllm"
    assert vllm_engine.max_model_len == MAX_MODEL_LEN


async def test_greedy_tokens_match_reference_one_at_a_time(vllm_engine, backbone, prompts, expected):
    assert any(p.shape[0] > prompts[0].shape[0] for p in prompts), "few-shot prompts must be longer"
    for i, p in enumerate(prompts):
        out = await run(vllm_engine, p, GREEDY, f"single-{i}")
        assert out.token_ids == expected[i], f"prompt {i} ({p.shape[0]} tokens)"
        assert out.finish_reason in ("stop", "length")
        assert same_text(out.text, backbone, out.token_ids)


async def test_greedy_tokens_match_reference_concurrently(vllm_engine, prompts, expected):
    outs = await asyncio.gather(*(run(vllm_engine, p, GREEDY, f"conc-{i}") for i, p in enumerate(prompts)))
    assert len(outs) == 8
    assert [o.token_ids for o in outs] == expected


async def test_concurrent_requests_are_batched(vllm_engine, prompts):
    before = vllm_engine.stats()
    options = SamplingOptions(max_tokens=24, temperature=0.0)
    await asyncio.gather(*(run(vllm_engine, p, options, f"batch-{i}") for i, p in enumerate(prompts)))
    after = vllm_engine.stats()
    new_steps = after.batches - before.batches
    assert new_steps > 0
    sizes = after.batch_sizes[-new_steps:]
    # The scheduler's own count of requests running in one step.
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8
    assert after.requests - before.requests == 8
    # Fewer steps than running the 8 requests one after another would take.
    assert new_steps < 8 * options.max_tokens


async def test_repeated_demonstration_prefix_hits_prefix_cache(vllm_engine, encoder, reference):
    # Demonstrations used nowhere else, long enough that BOS + demonstrations span more than one
    # 128-token KV block (the CPU block size).
    demos = demonstrations(encoder, 6, words=20, offset=3)
    block = vllm_engine.kv_block_tokens
    shared = 1 + sum(d.shape[0] for d in demos)
    assert shared > block, f"shared prefix of {shared} tokens fits in one {block}-token block"
    first_prompt, second_prompt = prompt(encoder, demos, 5), prompt(encoder, demos, 6)
    first = await run(vllm_engine, first_prompt, GREEDY, "prefix-1")
    second = await run(vllm_engine, second_prompt, GREEDY, "prefix-2")
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens >= block
    assert second.num_cached_tokens <= shared
    assert second.num_cached_tokens % block == 0
    # Served from the cache, the tokens are still the reference's.
    assert second.token_ids == (await run(reference, second_prompt, GREEDY, "prefix-ref")).token_ids
    stats = vllm_engine.stats()
    assert stats.prefix_cache_hits >= block


async def _wait_idle(engine, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()
        if stats.unfinished_requests == 0 and stats.running_requests == 0 and stats.waiting_requests == 0:
            return stats
        await asyncio.sleep(0.05)
    return engine.stats()


async def test_closing_the_stream_aborts_the_request(vllm_engine, prompts):
    options = SamplingOptions(max_tokens=MAX_MODEL_LEN - prompts[-1].shape[0] - 1, temperature=0.0)
    stream = vllm_engine.generate(prompts[-1], options, "disconnect")
    seen = 0
    async for out in stream:
        assert not out.finished
        seen += 1
        if seen == 3:
            break
    assert vllm_engine.is_tracking("disconnect")
    await stream.aclose()  # what the server does when the client goes away

    # The front end forgot the request at once; the scheduler reports nothing running.
    assert not vllm_engine.is_tracking("disconnect")
    stats = await _wait_idle(vllm_engine)
    assert stats.unfinished_requests == 0
    assert stats.running_requests == 0 and stats.waiting_requests == 0
    # And nothing is generated any more (it could not have finished on its own this soon).
    tokens = stats.generated_tokens
    await asyncio.sleep(0.5)
    assert vllm_engine.stats().generated_tokens == tokens
    await vllm_engine.check_health()


async def test_cancelled_task_aborts_the_request(vllm_engine, prompts):
    options = SamplingOptions(max_tokens=MAX_MODEL_LEN - prompts[-1].shape[0] - 1, temperature=0.0)
    first = asyncio.Event()

    async def consume():
        async for _ in vllm_engine.generate(prompts[-1], options, "cancelled"):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not vllm_engine.is_tracking("cancelled")
    stats = await _wait_idle(vllm_engine)
    assert stats.unfinished_requests == 0 and stats.running_requests == 0


async def test_abort_by_id_finishes_the_stream_with_abort(vllm_engine, prompts):
    options = SamplingOptions(max_tokens=MAX_MODEL_LEN - prompts[-1].shape[0] - 1, temperature=0.0)
    outputs = []
    async for out in vllm_engine.generate(prompts[-1], options, "aborted"):
        outputs.append(out)
        if len(outputs) == 2:
            await vllm_engine.abort("aborted")
    assert outputs[-1].finished and outputs[-1].finish_reason == "abort"
    assert len(outputs[-1].token_ids) < options.max_tokens
    stats = await _wait_idle(vllm_engine)
    assert stats.unfinished_requests == 0


async def test_stop_strings_seed_and_length(vllm_engine, prompts, expected):
    out = await run(vllm_engine, prompts[0], SamplingOptions(max_tokens=3), "length")
    assert out.finish_reason == "length" and len(out.token_ids) == 3
    sampled = [
        await run(
            vllm_engine, prompts[0], SamplingOptions(max_tokens=8, temperature=1.0, seed=7), f"seed-{i}"
        )
        for i in range(2)
    ]
    assert sampled[0].token_ids == sampled[1].token_ids
    full = await run(vllm_engine, prompts[1], GREEDY, "nostop")
    assert len(full.text) > 3, "the tiny model's greedy completion is long enough to cut"
    stop = full.text[2:4]
    cut = await run(vllm_engine, prompts[1], SamplingOptions(max_tokens=12, stop=(stop,)), "stop")
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]  # the stop string itself is left out


async def test_too_long_prompt_is_refused(vllm_engine, backbone):
    too_long = torch.zeros(MAX_MODEL_LEN, backbone.hidden_size)
    with pytest.raises(ValueError, match="max_model_len"):
        async for _ in vllm_engine.generate(too_long, GREEDY, "too-long"):
            pass
    assert not vllm_engine.is_tracking("too-long")


# -- lifecycle (both engines, one shape) ---------------------------------------------------------------
async def _refused(engine, embeds: torch.Tensor, match: str) -> None:
    with pytest.raises(EngineError, match=match):
        async for _ in engine.generate(embeds, GREEDY, f"refused-{engine.name}"):
            pass


async def test_an_engine_refuses_requests_before_start(settings, backbone, prompts):
    from server.engines.vllm_engine import VllmEngine

    for engine_class in (VllmEngine, TransformersEngine):
        engine = engine_class(settings, backbone, max_model_len=MAX_MODEL_LEN)  # cheap: starts nothing
        assert not engine.errored
        await _refused(engine, prompts[0], "not been started")
        with pytest.raises(EngineError, match="not been started"):
            await engine.check_health()
        await engine.shutdown()  # never started: nothing to free, and it stays down
        assert engine.errored
        await _refused(engine, prompts[0], "shut down")
        with pytest.raises(EngineError, match="already started"):
            await engine.start()


async def test_shutdown_ends_both_engines(vllm_engine, reference, prompts):
    """Runs last: it shuts down the module's engines (their fixtures' shutdown is then a no-op)."""
    for engine in (vllm_engine, reference):
        await engine.check_health()
        assert not engine.errored
        await engine.shutdown()
        assert engine.errored
        with pytest.raises(EngineError, match="shut down"):
            await engine.check_health()
        await _refused(engine, prompts[0], "shut down")
        await engine.shutdown()  # twice is harmless
