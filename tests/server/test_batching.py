"""Batched backbone forwards in the server: a registration's new items, concurrent requests' queries
(real tiny model, real Redis, transformers engine)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from bank import decode_record
from projector.backbone import Backbone
from projector.encoder import AimEncoder
from projector.projector import Projector
from projector.templates import Templates
from server.generate.query_batcher import QueryBatcher
from server.settings import Settings
from tests.helpers import EXTERNAL_REDIS_URL, decode_png, make_settings, png_b64, start_app
from tests.projector.test_batching import TOLERANCE, forwards

COLORS = ["red", "green", "blue", "yellow", "purple"]


def item(color: str) -> dict:
    return {"image": png_b64(color), "text": f"Q: What color is the shape? A: {color}" + " !" * len(color)}


async def registered(app, items: list[dict]) -> list[dict]:
    r = await app.client.post("/demonstrations", json={"set": "s", "items": items})
    assert r.status_code == 200, r.text
    out = []
    for i in r.json()["items"]:
        blob = await app.state.bank.client.get(app.state.bank._demo_key(i["id"]))
        record = decode_record(blob)
        described = (await app.client.get(f"/demonstrations/{i['id']}")).json()
        out.append({"answer": i, "record": record, "described": {**described, "created_at": None}})
    return out


async def test_a_registration_encodes_its_items_in_batches_and_stores_what_one_at_a_time_stores(
    tiny_model_dir: Path, tmp_path: Path
):
    items = [item(c) for c in COLORS]
    results = {}
    for batch_size in (1, 2):
        settings = make_settings(
            tiny_model_dir, tmp_path / str(batch_size), EXTERNAL_REDIS_URL, encode_batch_size=batch_size
        )
        async for app in start_app(settings):
            await app.state.bank.delete_set("s")
            for i in (await app.client.post("/demonstrations", json={"items": items})).json()["items"]:
                await app.state.bank.delete(i["id"])  # a clean slate: every item is new
            sizes, handle = forwards(app.state.encoder.backbone)
            try:
                results[batch_size] = await registered(app, items)
            finally:
                handle.remove()
            assert sizes == ([1] * 5 if batch_size == 1 else [2, 2, 1])
    for one, many in zip(results[1], results[2], strict=True):
        assert many["answer"] == one["answer"]  # id, fused token count, created
        assert many["described"] == one["described"]  # text, metadata, image/raw tokens, sets
        a, b = one["record"], many["record"]
        assert b.fused_tokens.shape == a.fused_tokens.shape
        assert (b.fused_tokens - a.fused_tokens).abs().max().item() <= TOLERANCE
        assert (b.image_embedding - a.image_embedding).abs().max().item() <= TOLERANCE


@pytest.fixture
def encoder(backbone: Backbone) -> AimEncoder:
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    return AimEncoder(backbone, projector, dtype=torch.float32)


async def test_concurrent_queries_share_a_forward_and_get_their_own_embeddings(encoder: AimEncoder):
    queries = [(decode_png(png_b64(c)), f"Which colour{'?' * i}", ()) for i, c in enumerate(COLORS + ["red"])]
    async with QueryBatcher(encoder, max_batch=4, max_wait_ms=500) as batcher:
        got = await asyncio.gather(*(batcher.embed(*q) for q in queries), batcher.embed(None, "text only"))
    assert batcher.batches == [4, 2]  # the text-only query needed no vision tower and did not queue
    for q, embedding in zip(queries, got, strict=False):
        alone = encoder.embed_query(*q)
        assert torch.equal(embedding.prefix, alone.prefix) and embedding.body.shape == alone.body.shape
        assert (embedding.body - alone.body).abs().max().item() <= TOLERANCE
    assert (
        got[-1].image_tokens == 0 and got[-1].num_tokens == encoder.embed_query(None, "text only").num_tokens
    )


@pytest.mark.parametrize(
    "few_shot", ["After the examples: <image>\n{text}", "After the examples: {demonstrations}<image>\n{text}"]
)
async def test_few_shot_and_zero_shot_queries_are_batched_apart(
    encoder: AimEncoder, monkeypatch, few_shot: str
):
    """Queries wrapped in different templates never share a forward: each gets its own wrapping, its
    prefix (what goes before the demonstrations) included."""
    monkeypatch.setattr(encoder.backbone, "templates", Templates(few_shot_query=few_shot))
    queries = [(decode_png(png_b64(c)), f"Which colour{'?' * i}", ()) for i, c in enumerate(COLORS[:4])]
    flags = [False, True, False, True]
    async with QueryBatcher(encoder, max_batch=4, max_wait_ms=500) as batcher:
        got = await asyncio.gather(
            *(batcher.embed(*q, few_shot=f) for q, f in zip(queries, flags, strict=True))
        )
    assert batcher.batches == [2, 2]
    for q, f, embedding in zip(queries, flags, got, strict=True):
        alone = encoder.embed_query(*q, few_shot=f)
        assert torch.equal(embedding.prefix, alone.prefix) and embedding.body.shape == alone.body.shape
        assert (embedding.body - alone.body).abs().max().item() <= TOLERANCE
    assert got[1].num_tokens > got[0].num_tokens  # the few-shot wrapping is longer


async def test_a_bad_query_fails_alone_and_its_batch_is_answered(encoder: AimEncoder, backbone: Backbone):
    good = (decode_png(png_b64("red")), "Which colour?", ())
    # More placeholders than images: the model's forward raises (a StopIteration, which asyncio cannot
    # carry: unguarded, the batcher would wait on it forever). The server refuses such text earlier.
    bad = (decode_png(png_b64("blue")), f"two images {backbone.image_token}", ())
    async with QueryBatcher(encoder, max_batch=8, max_wait_ms=500) as batcher:
        results = await asyncio.gather(
            batcher.embed(*good), batcher.embed(*bad), batcher.embed(*good), return_exceptions=True
        )
    assert isinstance(results[1], RuntimeError)
    for r in (results[0], results[2]):
        assert torch.equal(r.body, encoder.embed_query(*good).body)


async def test_generate_under_concurrency_answers_as_it_does_alone(tiny_model_dir: Path, tmp_path: Path):
    settings = make_settings(
        tiny_model_dir, tmp_path, EXTERNAL_REDIS_URL, query_batch_size=8, query_batch_wait_ms=100
    )
    bodies = [
        {"query": {"image": png_b64(c), "text": "Q: What color is the shape? A:"}, "max_tokens": 8}
        for c in COLORS[:4]
    ]
    async for app in start_app(settings):
        alone = [(await app.client.post("/generate", json=b)).json()["text"] for b in bodies]
        batches_before = len(app.state.generate.queries.batches)
        t0 = time.perf_counter()
        together = await asyncio.gather(*(app.client.post("/generate", json=b) for b in bodies))
        elapsed_ms = (time.perf_counter() - t0) * 1000
        assert [r.json()["text"] for r in together] == alone
        for r in together:  # the engine's share of the request, for bench/serve.py's overhead figure
            engine_ms = float(r.headers["server-timing"].removeprefix("engine;dur="))
            assert 0 < engine_ms <= elapsed_ms
        assert max(app.state.generate.queries.batches[batches_before:]) > 1


async def test_query_batching_is_off_by_default_on_cpu(tiny_model_dir: Path, tmp_path: Path):
    async for app in start_app(make_settings(tiny_model_dir, tmp_path, EXTERNAL_REDIS_URL)):
        assert app.state.encoder.backbone.device.type == "cpu"
        assert app.state.generate.queries.max_batch == 1


@pytest.mark.parametrize(
    "field, value", [("encode_batch_size", 0), ("query_batch_size", 0), ("query_batch_wait_ms", -1)]
)
def test_batching_settings_are_validated(field: str, value: float):
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})
