"""Demonstrations chosen per query: the k members of a set whose images are closest to the query's.

Each demonstration carries an image embedding (``bank.codec``, format 2). For each set an in-process
index keeps the members' embeddings as one L2-normalised matrix; ranking is one matrix-vector product
and a top-k (``projector.selection``: the same ranking and order ``aim eval --select`` measures). The
index is rebuilt only when the namespace's set version moves (every change to any of its sets moves
it, on every replica, since the version lives in Redis), so a steady set costs one GET per query.
Members registered before embeddings existed rank after every member that has one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from bank.store import DemonstrationBank
from projector.selection import SIMILAR_ORDER, normalise_rows, prompt_order, rank_by_similarity


@dataclass(frozen=True)
class _Entry:
    version: int
    ids: list[str]
    matrix: torch.Tensor  # [members, d], rows L2-normalised; zero rows for members without embedding
    has_embedding: torch.Tensor  # [members] bool


class SimilarityIndex:
    def __init__(self, *, max_sets: int = 256) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.max_sets = max_sets
        self.rebuilds = 0

    async def most_similar(
        self, bank: DemonstrationBank, set_name: str, query: torch.Tensor, k: int
    ) -> list[str]:
        """Ids of the ``k`` members most similar to ``query``, in prompt order (``SIMILAR_ORDER``: the
        most similar last, next to the query it resembles). Ties keep registration order."""
        entry = await self._entry(bank, set_name)
        ranked = rank_by_similarity(entry.matrix, query, k, entry.has_embedding)
        return [entry.ids[i] for i in prompt_order(ranked, SIMILAR_ORDER)]

    async def _entry(self, bank: DemonstrationBank, set_name: str) -> _Entry:
        key = bank.prefix + set_name
        version = await bank.sets_version()  # read before the set: a change after it forces a rebuild
        entry = self._entries.get(key)
        if entry is not None and entry.version == version:
            self._entries.move_to_end(key)
            return entry
        ids = await bank.get_set(set_name)
        embeddings = await bank.image_embeddings(ids)
        ids = [i for i in ids if i in embeddings]  # deleted meanwhile: the next version drops them anyway
        dim = next((e.shape[0] for e in embeddings.values() if e is not None), 1)
        rows = [embeddings[i] if embeddings[i] is not None else torch.zeros(dim) for i in ids]
        matrix = normalise_rows(torch.stack(rows)) if rows else torch.zeros(0, dim)
        has = torch.tensor([embeddings[i] is not None for i in ids], dtype=torch.bool)
        entry = _Entry(version, ids, matrix, has)
        self._entries[key] = entry
        self.rebuilds += 1
        while len(self._entries) > self.max_sets:
            self._entries.popitem(last=False)
        return entry
