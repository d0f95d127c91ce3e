"""A bank rebuilt for a new projector: every demonstration whose image was kept is encoded again under
the new fingerprint, byte-identical to a fresh registration, sets in order; resumable."""

from __future__ import annotations

import base64

import torch

from bank import DemonstrationBank
from projector.images import decode_image
from server.app import bank_fingerprint, load_encoder
from server.reencode import reencode
from tests.helpers import make_settings, png_b64, start_app

SIDE = 400  # AIM_MAX_IMAGE_SIDE for this test


async def test_reencode_rebuilds_every_kept_demonstration_under_the_new_fingerprint(tiny_model_dir, tmp_path):
    # The last image is larger than the side images are reduced to on arrival: re-encoding must reduce
    # it the same way, or its fused tokens would differ from a fresh registration's.
    items = [
        {"image": png_b64(c, size=size), "text": f"Q: colour? A: {c}", "metadata": {"c": c}}
        for c, size in (("red", (64, 64)), ("blue", (64, 64)), ("green", (800, 640)))
    ]
    async for app in start_app(make_settings(tiny_model_dir, tmp_path / "old", bank_keep_sources=False)):
        r = await app.client.post(
            "/demonstrations", json={"set": "s", "items": [{"image": png_b64("pink"), "text": "no source"}]}
        )
        unkept = r.json()["items"][0]["id"]
    async for app in start_app(
        make_settings(tiny_model_dir, tmp_path / "old", bank_keep_sources=True, max_image_side=SIDE)
    ):
        r = await app.client.post("/demonstrations", json={"set": "s", "items": items})
        kept = [it["id"] for it in r.json()["items"]]
        client, old_fp = app.state.bank.client, app.state.fingerprint

        new_encoder = load_encoder(make_settings(tiny_model_dir, tmp_path / "unused", projector_kind="mlp"))
        new_fp = bank_fingerprint(new_encoder)
        assert new_fp != old_fp
        target = DemonstrationBank(client, new_fp)
        summary = await reencode(
            DemonstrationBank(client, old_fp), target, new_encoder, max_image_side=SIDE, progress=False
        )
        assert (summary.encoded, summary.already_there, summary.sets) == (3, 0, 1)
        assert (
            list(summary.skipped) == [f"-/{unkept}"]
            and "AIM_BANK_KEEP_SOURCES" in summary.skipped[f"-/{unkept}"]
        )

        assert await target.get_set("s") == kept  # registration order, the unkept one left out
        for demo_id, item in zip(kept, items, strict=True):
            record = await target.get(demo_id)
            fresh = new_encoder.encode_demonstration(
                decode_image(base64.b64decode(item["image"]), max_side=SIDE), item["text"]
            )
            assert torch.equal(record.fused_tokens, fresh.fused_tokens)
            assert record.metadata == item["metadata"] and record.text == item["text"]
            assert await target.source(demo_id) == base64.b64decode(item["image"])  # kept for the next time

        again = await reencode(
            DemonstrationBank(client, old_fp), target, new_encoder, max_image_side=SIDE, progress=False
        )
        assert (again.encoded, again.already_there) == (0, 3)

    # The server on the new projector serves the rebuilt set.
    async for app in start_app(make_settings(tiny_model_dir, tmp_path / "old", projector_kind="mlp")):
        assert app.state.fingerprint == new_fp
        assert (await app.client.get("/sets/s")).json()["ids"] == kept
        r = await app.client.post(
            "/generate",
            json={"query": {"text": "Q: colour? A:"}, "demonstrations": {"set": "s"}, "max_tokens": 2},
        )
        assert r.status_code == 200 and r.json()["demonstrations"] == kept
