"""Registering demonstrations the bank already holds: they join sets by id, never re-encoded or
rewritten; on both Redis deployments (real tiny model, real Redis, transformers engine)."""

from __future__ import annotations

from pathlib import Path

from bank import store
from tests.helpers import bank_snapshot, count_calls, make_settings, png_b64, start_app


def item(color: str) -> dict:
    return {"image": png_b64(color), "text": f"Q: What color is the shape? A: {color}"}


async def test_a_known_demonstration_joins_a_new_set_without_encoding_or_rewriting(
    tiny_model_dir: Path, tmp_path: Path, redis_url: str | None, monkeypatch
):
    async for app in start_app(make_settings(tiny_model_dir, tmp_path, redis_url)):
        first = (await app.client.post("/demonstrations", json={"set": "a", "items": [item("red")]})).json()
        (red,) = first["items"]
        bank = app.state.bank
        blob_key = bank._demo_key(red["id"])
        blob_before = await bank_snapshot(bank.client, blob_key)  # bytes, type and TTL of the blob
        stored_before = (await app.client.get(f"/demonstrations/{red['id']}")).json()
        bank._cache.clear()  # a read of the tensor would now show up as a cache miss
        reads_before = bank.cache_misses + bank.cache_hits
        encoded = count_calls(monkeypatch, app.state.encoder, "encode_demonstrations")
        decoded = count_calls(monkeypatch, store, "decode_record")

        r = await app.client.post(
            "/demonstrations", json={"set": "b", "items": [item("red"), item("green"), item("red")]}
        )

        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [(i["id"], i["fused_tokens"], i["created"]) for i in (items[0], items[2])] == [
            (red["id"], red["fused_tokens"], False)
        ] * 2
        assert items[1]["created"] is True and items[1]["fused_tokens"] > 0
        # Only green was encoded (the service's encoder is the app's); red's tensor was not even read.
        assert [[text for _, text in call[0]] for call in encoded] == [[item("green")["text"]]]
        assert decoded == [] and bank.cache_misses + bank.cache_hits == reads_before
        assert await bank_snapshot(bank.client, blob_key) == blob_before
        assert (await app.client.get("/sets/b")).json()["ids"] == [red["id"], items[1]["id"]]
        stored = (await app.client.get(f"/demonstrations/{red['id']}")).json()
        assert stored == {**stored_before, "sets": ["a", "b"]}  # created_at and all else unchanged


async def test_a_demonstration_deleted_during_registration_is_encoded_again(
    tiny_model_dir: Path, tmp_path: Path, redis_url: str | None, monkeypatch
):
    """Deleted between the existence check and the write: the set never points at a missing id."""
    async for app in start_app(make_settings(tiny_model_dir, tmp_path, redis_url)):
        (red,) = (await app.client.post("/demonstrations", json={"items": [item("red")]})).json()["items"]
        bank = app.state.bank

        async def counts_then_deleted_elsewhere(ids, real=bank.fused_token_counts, bank=bank, gone=red["id"]):
            counts = await real(ids)
            await bank.delete(gone)  # what another request or replica does meanwhile
            return counts

        monkeypatch.setattr(bank, "fused_token_counts", counts_then_deleted_elsewhere)
        encoded = count_calls(monkeypatch, app.state.encoder, "encode_demonstrations")

        r = await app.client.post("/demonstrations", json={"set": "s", "items": [item("red")]})

        assert r.status_code == 200, r.text
        assert r.json()["items"] == [{"id": red["id"], "fused_tokens": red["fused_tokens"], "created": True}]
        assert len(encoded) == 1
        assert (await app.client.get("/sets/s")).json()["ids"] == [red["id"]]
        assert (await app.client.get(f"/demonstrations/{red['id']}")).status_code == 200
