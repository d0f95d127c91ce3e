"""Per-query selection on the real store: ranking, order, refresh on change, members without an
embedding, namespaces. Embeddings are chosen by hand so the right answer is known."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bank import DemonstrationBank, open_redis
from bank.selection import SimilarityIndex
from tests.helpers import demo_record


def with_embedding(i: int, direction: list[float] | None) -> object:
    record = demo_record(i)
    return replace(record, image_embedding=None if direction is None else torch.tensor(direction))


@pytest.fixture
async def bank(redis_url, tmp_path: Path):
    connection = await open_redis(redis_url, tmp_path / "bank")
    yield DemonstrationBank(connection.client, "e" * 16, hidden_size=16)
    await connection.close()


async def test_the_k_most_similar_come_back_most_similar_last(bank):
    records = [with_embedding(1, [1, 0, 0]), with_embedding(2, [0, 1, 0]), with_embedding(3, [0.9, 0.1, 0]),
               with_embedding(4, [0, 0, 1]), with_embedding(5, [0.7, 0.7, 0])]  # fmt: skip
    await bank.put_many(records, set_name="s")
    index = SimilarityIndex()
    chosen = await index.most_similar(bank, "s", torch.tensor([1.0, 0.0, 0.0]), 3)
    assert chosen == [records[4].id, records[2].id, records[0].id]  # cosine .71, .99, 1.0
    assert await index.most_similar(bank, "s", torch.tensor([0.0, 0.0, 5.0]), 1) == [records[3].id]


async def test_the_index_is_rebuilt_only_when_a_set_changes(bank):
    await bank.put_many([with_embedding(1, [1, 0]), with_embedding(2, [0, 1])], set_name="s")
    index = SimilarityIndex()
    q = torch.tensor([0.1, 1.0])  # closest to 2 ([0, 1]) until 6 ([0.1, 1]) joins
    for _ in range(3):
        assert await index.most_similar(bank, "s", q, 1) == [demo_record(2).id]
    assert index.rebuilds == 1
    await bank.put_many([with_embedding(6, [0.1, 1])], set_name="s")  # a closer one joins
    assert await index.most_similar(bank, "s", q, 1) == [demo_record(6).id]
    await bank.delete(demo_record(6).id)
    assert await index.most_similar(bank, "s", q, 1) == [demo_record(2).id]
    assert index.rebuilds == 3
    await bank.add_to_set([demo_record(1).id], "s")  # already a member: nothing changed, no rebuild
    await index.most_similar(bank, "s", q, 1)
    assert index.rebuilds == 3


async def test_members_without_an_embedding_rank_after_all_others(bank):
    await bank.put_many(
        [with_embedding(1, None), with_embedding(2, [-1, 0]), with_embedding(3, [1, 0])], set_name="s"
    )
    chosen = await SimilarityIndex().most_similar(bank, "s", torch.tensor([1.0, 0.0]), 3)
    assert chosen == [demo_record(1).id, demo_record(2).id, demo_record(3).id]


async def test_namespaces_have_their_own_indexes(bank):
    await bank.put_many([with_embedding(1, [1, 0])], set_name="s")
    alice = bank.in_namespace("alice")
    await alice.put_many([with_embedding(2, [1, 0])], set_name="s")
    index = SimilarityIndex()
    q = torch.tensor([1.0, 0.0])
    assert await index.most_similar(bank, "s", q, 1) == [demo_record(1).id]
    assert await index.most_similar(alice, "s", q, 1) == [demo_record(2).id]


async def test_embeddings_are_read_without_the_fused_tokens(bank, monkeypatch):
    import bank.store as store

    await bank.put_many([with_embedding(1, [3, 4])], set_name="s")
    bank._cache.clear()
    decoded = []
    monkeypatch.setattr(store, "decode_record", lambda *a, **k: decoded.append(1))
    embeddings = await bank.image_embeddings([demo_record(1).id, "0" * 32])
    assert set(embeddings) == {demo_record(1).id}
    assert torch.equal(embeddings[demo_record(1).id], torch.tensor([3.0, 4.0]))
    assert decoded == []
