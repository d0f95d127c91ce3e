"""The HTTP API in-process (real tiny model, real Redis, transformers engine)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from bank.codec import decode_record
from projector.backbone import Backbone
from projector.encoder import AimEncoder
from projector.projector import Projector
from tests.helpers import RunningApp, decode_png, make_settings, png_b64, start_app

COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]


def item(color: str, text: str | None = None, shape: str = "circle") -> dict:
    return {"image": png_b64(color, shape=shape), "text": text or f"Q: What color is the shape? A: {color}"}


async def register(app: RunningApp, items: list[dict], set_name: str | None = None) -> list[str]:
    body: dict = {"items": items}
    if set_name:
        body["set"] = set_name
    r = await app.client.post("/demonstrations", json=body)
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def greedy(backbone: Backbone, embeds: torch.Tensor, max_new_tokens: int) -> list[int]:
    out = backbone.model.generate(
        inputs_embeds=embeds[None],
        attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
    )[0].tolist()
    eos = set(backbone.eos_token_ids)
    return next((out[:i] for i, t in enumerate(out) if t in eos), out)


async def test_fused_tokens_in_redis_equal_a_fresh_recomputation(app: RunningApp, backbone: Backbone):
    ids = await register(app, [item("red"), item("blue", shape="square")])
    encoder = AimEncoder(
        backbone,
        Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size),
        dtype=torch.float32,
    )
    # The registration's items shared one padded forward (AIM_ENCODE_BATCH_SIZE): the same batch again
    # gives the same bytes (tests/projector/test_batching.py compares a batch with items one at a time).
    fresh = encoder.encode_demonstrations(
        [
            (decode_png(png_b64(c, shape=s)), item(c)["text"])
            for c, s in [("red", "circle"), ("blue", "square")]
        ],
        batch_size=app.state.settings.encode_batch_size,
    )
    for demo_id, recomputed in zip(ids, fresh, strict=True):
        blob = await app.state.bank.client.get(app.state.bank._demo_key(demo_id))
        stored = decode_record(blob).fused_tokens
        assert (
            stored.view(torch.uint8).numpy().tobytes()
            == recomputed.fused_tokens.view(torch.uint8).numpy().tobytes()
        )


async def test_registering_twice_is_a_no_op(app: RunningApp):
    first = (await app.client.post("/demonstrations", json={"items": [item("teal")]})).json()
    again = (await app.client.post("/demonstrations", json={"items": [item("teal"), item("teal")]})).json()
    assert first["items"][0]["created"] is True
    assert [i["created"] for i in again["items"]] == [False, False]
    assert {i["id"] for i in again["items"]} == {first["items"][0]["id"]}


async def test_few_shot_generate_equals_direct_computation(app: RunningApp, backbone: Backbone):
    ids = await register(app, [item(c) for c in COLORS[:3]], set_name="direct")
    query = {"image": png_b64("green", shape="square"), "text": "Q: What color is the shape? A:"}
    r = await app.client.post(
        "/generate", json={"query": query, "demonstrations": {"set": "direct", "k": 3}, "max_tokens": 12}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    records = await app.state.bank.get_many(ids)
    q = backbone.embed_query(decode_png(query["image"]), query["text"])
    embeds = torch.cat([q.prefix, *(rec.fused_tokens for rec in records), q.body])
    expected = greedy(backbone, embeds, 12)
    assert body["text"] == backbone.tokenizer.decode(expected, skip_special_tokens=True)
    assert body["demonstrations"] == ids
    fused = sum(rec.num_fused_tokens for rec in records)
    raw = sum(rec.raw_tokens for rec in records)
    assert body["usage"] == {
        "prompt_tokens": fused + q.num_tokens,
        "fused_tokens": fused,
        "query_tokens": q.num_tokens,
        "completion_tokens": len(expected),
        "raw_multimodal_prompt_tokens": q.num_tokens + raw,
        "cached_tokens": 0,
    }
    # each demonstration would have cost its 16 image tokens on top of its text
    assert body["usage"]["raw_multimodal_prompt_tokens"] - body["usage"]["prompt_tokens"] == 3 * 16


async def test_zero_shot_generate_equals_the_mllms_own_generate(app: RunningApp, backbone: Backbone):
    image_b64, text = png_b64("yellow", (90, 70), "square"), "What is in the image?"
    r = await app.client.post(
        "/generate", json={"query": {"image": image_b64, "text": text}, "max_tokens": 10}
    )
    inputs = backbone.processor(images=decode_png(image_b64), text=f"<image>\n{text}", return_tensors="pt")
    out = backbone.model.generate(**inputs, max_new_tokens=10, do_sample=False)[
        0, inputs["input_ids"].shape[1] :
    ]
    assert r.json()["text"] == backbone.tokenizer.decode(out, skip_special_tokens=True)
    assert r.json()["usage"]["query_tokens"] == inputs["input_ids"].shape[1]


async def test_concurrent_requests_are_batched_and_equal_solo_requests(app: RunningApp):
    ids = await register(app, [item(c) for c in COLORS[:2]])
    requests = [
        {
            "query": {"image": png_b64(c), "text": f"Describe the {c} picture."},
            "max_tokens": 6 + i,
            "demonstrations": {"ids": ids[: i % 3]},
        }
        for i, c in enumerate(COLORS)
    ]
    solo = [(await app.client.post("/generate", json=body)).json()["text"] for body in requests]
    stats = app.state.engine.stats()
    batches_before = len(stats.batch_sizes)
    together = await asyncio.gather(*(app.client.post("/generate", json=body) for body in requests))
    assert [r.json()["text"] for r in together] == solo
    assert max(stats.batch_sizes[batches_before:]) > 1, stats.batch_sizes


async def test_stream_sends_the_same_text_as_a_plain_request(app: RunningApp):
    body = {"query": {"text": "Is there a circle?"}, "max_tokens": 8}
    plain = (await app.client.post("/generate", json=body)).json()
    r = await app.client.post("/generate", json={**body, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["text"] for c in chunks) == plain["text"]
    assert chunks[-1]["finish_reason"] == plain["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"]


async def test_sets_and_deletes(app: RunningApp):
    ids = await register(app, [item("pink"), item("brown")], set_name="del")
    r = await app.client.get("/sets/del")
    assert r.json() == {"name": "del", "ids": ids, "size": 2, "offset": 0, "limit": 10_000}
    r = await app.client.get(f"/demonstrations/{ids[0]}")
    assert r.json()["sets"] == ["del"] and r.json()["text"] == item("pink")["text"]
    assert (await app.client.delete(f"/demonstrations/{ids[0]}")).json() == {"id": ids[0], "deleted": True}
    assert (await app.client.get("/sets/del")).json()["ids"] == [ids[1]]
    assert (await app.client.delete("/sets/del")).json() == {"name": "del", "deleted": True}
    assert (await app.client.get("/sets/del")).status_code == 404
    assert (await app.client.get(f"/demonstrations/{ids[1]}")).status_code == 200  # demos outlive their set


async def test_health_ready_metrics_and_openapi(app: RunningApp):
    assert (await app.client.get("/health")).json() == {"status": "ok"}
    ready = (await app.client.get("/ready")).json()
    assert ready["status"] == "ready" and ready["engine"] == "transformers" and ready["fingerprint"]
    await app.client.post("/generate", json={"query": {"text": "hi"}, "max_tokens": 2})
    metrics = (await app.client.get("/metrics")).text
    assert "aim_generate_requests_total" in metrics and "aim_prompt_tokens_total" in metrics
    paths = (await app.client.get("/openapi.json")).json()["paths"]
    assert {"/demonstrations", "/demonstrations/{demonstration_id}", "/sets/{name}", "/generate"} <= set(
        paths
    )
    assert (await app.client.get("/docs")).status_code == 200


async def test_restart_keeps_demonstrations_and_another_projector_never_sees_them(
    tiny_model_dir: Path, tmp_path: Path, redis_url: str | None, backbone: Backbone
):
    """Fingerprint isolation and persistence, on the embedded bank and on AIM_REDIS_URL."""
    settings = make_settings(tiny_model_dir, tmp_path, redis_url)
    async for a in start_app(settings):
        ids = await register(a, [item("red"), item("blue")], set_name="persist")
        before = (
            await a.client.post(
                "/generate",
                json={"query": {"text": "Colour?"}, "demonstrations": {"set": "persist"}, "max_tokens": 5},
            )
        ).json()

    other = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    with torch.no_grad():
        other.linear.weight.mul_(0.5)
    other.save(tmp_path / "other-projector")
    async for b in start_app(
        make_settings(tiny_model_dir, tmp_path, redis_url, projector=tmp_path / "other-projector")
    ):
        assert (await b.client.get(f"/demonstrations/{ids[0]}")).status_code == 404
        assert (await b.client.get("/sets/persist")).status_code == 404
        r = await b.client.post("/generate", json={"query": {"text": "x"}, "demonstrations": {"ids": ids}})
        assert r.status_code == 404 and r.json()["error"]["code"] == "demonstration_not_found"
        assert (await b.client.get("/ready")).json()["fingerprint"] != before["id"]

    async for a in start_app(settings):
        assert (await a.client.get("/sets/persist")).json()["ids"] == ids
        after = (
            await a.client.post(
                "/generate",
                json={"query": {"text": "Colour?"}, "demonstrations": {"set": "persist"}, "max_tokens": 5},
            )
        ).json()
        assert (after["text"], after["usage"]) == (before["text"], before["usage"])


async def test_query_template_setting_wraps_queries_and_changes_the_fingerprint(
    app: RunningApp, tiny_model_dir: Path, tmp_path: Path
):
    body = {"query": {"text": "Is there a circle?"}, "max_tokens": 2}
    plain = (await app.client.post("/generate", json=body)).json()["usage"]["query_tokens"]
    template = "USER: {text} ASSISTANT:"
    async for other in start_app(make_settings(tiny_model_dir, tmp_path, text_query_template=template)):
        wrapped = (await other.client.post("/generate", json=body)).json()["usage"]["query_tokens"]
        assert other.state.encoder.backbone.templates.text_query == template
        assert other.state.fingerprint != app.state.fingerprint
    backbone = app.state.encoder.backbone
    extra = len(backbone.tokenizer("USER:  ASSISTANT:", add_special_tokens=False).input_ids)
    assert wrapped > plain and wrapped - plain <= extra + 1


def test_a_template_without_a_text_slot_is_refused(tiny_model_dir: Path, tmp_path: Path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"must contain \{text\}"):
        make_settings(tiny_model_dir, tmp_path, query_template="<image> no slot")
