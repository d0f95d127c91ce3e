"""The bank as files: export, wipe, import gives back byte-identical keys; a damaged export is refused
before anything is written. On both Redis deployments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bank import DemonstrationBank, open_redis
from bank.transfer import TransferError, export_bank, import_bank, stored_fingerprints
from tests.helpers import bank_snapshot, demo_record

FP_A, FP_B = "a" * 16, "b" * 16


@pytest.fixture
async def client(redis_url, tmp_path: Path):
    connection = await open_redis(redis_url, tmp_path / "bank")
    yield connection.client
    await connection.close()


async def fill(client) -> None:
    a = DemonstrationBank(client, FP_A)
    await a.put_many([demo_record(1), demo_record(2, torch.bfloat16)], set_name="first")
    await a.put_many([demo_record(2, torch.bfloat16), demo_record(3)], set_name="second")
    await a.in_namespace("alice").put_many(
        [demo_record(1), demo_record(4)], set_name="first", sources={demo_record(4).id: b"kept image bytes"}
    )
    await DemonstrationBank(client, FP_B).put_many([demo_record(5)], set_name="other")


async def snapshot(client) -> dict:
    return {fp: await bank_snapshot(client, f"aim:v1:{{{fp}}}:") for fp in (FP_A, FP_B)}


async def wipe(client) -> None:
    async for key in client.scan_iter(match="aim:v1:*"):
        await client.delete(key)


async def test_export_wipe_import_restores_every_key_byte_for_byte(client, tmp_path):
    await fill(client)
    before = await snapshot(client)
    assert set(await stored_fingerprints(client)) >= {FP_A, FP_B}
    summary = await export_bank(client, tmp_path / "export", [FP_A, FP_B])
    assert summary.demonstrations == {FP_A: 5, FP_B: 1} and summary.sets == {FP_A: 3, FP_B: 1}
    await wipe(client)
    restored = await import_bank(client, tmp_path / "export")
    assert restored.created == {FP_A: 5, FP_B: 1}
    assert await snapshot(client) == before
    again = await import_bank(client, tmp_path / "export")  # idempotent: nothing new, nothing changed
    assert again.created == {FP_A: 0, FP_B: 0}
    assert await snapshot(client) == before


async def test_only_the_named_fingerprint_is_imported(client, tmp_path):
    await fill(client)
    await export_bank(client, tmp_path / "export", [FP_A, FP_B])
    await wipe(client)
    await import_bank(client, tmp_path / "export", fingerprints=[FP_B])
    assert await stored_fingerprints(client) == [FP_B]
    with pytest.raises(TransferError, match="holds no fingerprint"):
        await import_bank(client, tmp_path / "export", fingerprints=["c" * 16])


@pytest.mark.parametrize("damage", ["flip-a-byte", "swap-blobs", "escape", "not-an-export"])
async def test_a_damaged_export_is_refused_and_writes_nothing(client, tmp_path, damage):
    await fill(client)
    out = tmp_path / "export"
    await export_bank(client, out, [FP_A])
    listing = [json.loads(line) for line in (out / FP_A / "demonstrations.jsonl").read_text().splitlines()]
    if damage == "flip-a-byte":
        path = out / FP_A / listing[0]["file"]
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "swap-blobs":  # consistent sha256s, but a blob listed as another demonstration
        listing[0]["file"], listing[1]["file"] = listing[1]["file"], listing[0]["file"]
        listing[0]["sha256"], listing[1]["sha256"] = listing[1]["sha256"], listing[0]["sha256"]
        (out / FP_A / "demonstrations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in listing))
    elif damage == "escape":
        listing[0]["file"] = "../../outside.safetensors"
        (out / FP_A / "demonstrations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in listing))
    else:
        (out / "manifest.json").write_text("{}")
    await wipe(client)
    with pytest.raises(TransferError):
        await import_bank(client, out)
    assert await stored_fingerprints(client) == []


async def test_export_refuses_a_directory_that_is_not_empty(client, tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "keep.txt").write_text("mine")
    with pytest.raises(TransferError, match="not empty"):
        await export_bank(client, tmp_path / "export", [FP_A])
