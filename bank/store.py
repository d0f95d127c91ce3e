"""The demonstration bank on Redis.

Layout, all under ``aim:v1:{<fingerprint>}:`` (the braces are a Redis Cluster hash tag, so every key
of one fingerprint lives on one slot and the Lua scripts below stay atomic there too):

- ``demo:<id>``         one blob per demonstration (see ``bank.codec``)
- ``set:<name>``        list of ids in registration order
- ``set-members:<name>`` the same ids as a set, so appends are idempotent
- ``demo-sets:<id>``    the sets an id belongs to, so deleting it cleans every set
- ``sets``              all set names

Every mutation is one Lua script: it happens completely or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import torch
from cachetools import LRUCache

from bank.codec import CodecError, DemonstrationRecord, decode_record, encode_record

KEY_VERSION = "v1"

_PUT = """
local prefix, set, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local created = {}
for i = 1, n do
  local id, blob = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  created[i] = redis.call('SET', prefix .. 'demo:' .. id, blob, 'NX') and 1 or 0
  if set ~= '' then
    if redis.call('SADD', prefix .. 'set-members:' .. set, id) == 1 then
      redis.call('RPUSH', prefix .. 'set:' .. set, id)
    end
    redis.call('SADD', prefix .. 'demo-sets:' .. id, set)
  end
end
if set ~= '' and n > 0 then redis.call('SADD', prefix .. 'sets', set) end
return created
"""

_DELETE_DEMO = """
local prefix, id = ARGV[1], ARGV[2]
local existed = redis.call('DEL', prefix .. 'demo:' .. id)
for _, s in ipairs(redis.call('SMEMBERS', prefix .. 'demo-sets:' .. id)) do
  redis.call('LREM', prefix .. 'set:' .. s, 0, id)
  redis.call('SREM', prefix .. 'set-members:' .. s, id)
  if redis.call('LLEN', prefix .. 'set:' .. s) == 0 then redis.call('SREM', prefix .. 'sets', s) end
end
redis.call('DEL', prefix .. 'demo-sets:' .. id)
return existed
"""

_DELETE_SET = """
local prefix, s = ARGV[1], ARGV[2]
for _, id in ipairs(redis.call('LRANGE', prefix .. 'set:' .. s, 0, -1)) do
  redis.call('SREM', prefix .. 'demo-sets:' .. id, s)
end
redis.call('DEL', prefix .. 'set-members:' .. s)
redis.call('SREM', prefix .. 'sets', s)
return redis.call('DEL', prefix .. 'set:' .. s)
"""


class UnknownDemonstrationError(KeyError):
    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(ids)
        self.ids = list(ids)


class UnknownSetError(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class CorruptRecordError(RuntimeError):
    """A stored blob failed its checks; it has been removed so the demonstration can be re-registered."""

    def __init__(self, demonstration_id: str, reason: str) -> None:
        super().__init__(f"stored demonstration {demonstration_id} is corrupt ({reason}); it was removed")
        self.demonstration_id = demonstration_id


@dataclass(frozen=True)
class NewDemonstration:
    id: str
    fused_tokens: torch.Tensor
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    image_tokens: int = 0
    raw_tokens: int = 0


@dataclass(frozen=True)
class PutResult:
    id: str
    fused_tokens: int
    created: bool


class DemonstrationBank:
    """Fused tokens of one fingerprint, with an in-process LRU in front of Redis.

    Cached records are immutable for their fingerprint, so the cache never serves stale tensors; a
    cheap existence check on every read keeps deletions made by other replicas visible.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        fingerprint: str,
        *,
        hidden_size: int | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.client = client
        self.fingerprint = fingerprint
        self.hidden_size = hidden_size
        self.prefix = f"aim:{KEY_VERSION}:{{{fingerprint}}}:"
        self._cache: LRUCache[str, DemonstrationRecord] = LRUCache(
            maxsize=max(cache_bytes, 1), getsizeof=lambda r: r.fused_tokens.nbytes + 512
        )
        self._put = client.register_script(_PUT)
        self._delete_demo = client.register_script(_DELETE_DEMO)
        self._delete_set = client.register_script(_DELETE_SET)
        self.cache_hits = 0
        self.cache_misses = 0

    def _demo_key(self, demonstration_id: str) -> str:
        return f"{self.prefix}demo:{demonstration_id}"

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    # -- writes -----------------------------------------------------------------------------------
    async def put_many(
        self, items: Sequence[NewDemonstration], *, set_name: str | None = None
    ) -> list[PutResult]:
        """Store all items and append them to ``set_name``, atomically. Existing ids are left as they are."""
        now = time.time()
        args: list[Any] = [self.prefix, set_name or "", len(items)]
        for item in items:
            record = DemonstrationRecord(
                id=item.id,
                fused_tokens=item.fused_tokens,
                text=item.text,
                metadata=item.metadata,
                created_at=now,
                image_tokens=item.image_tokens,
                raw_tokens=item.raw_tokens,
            )
            args += [item.id, encode_record(record)]
        created = await self._put(keys=[], args=args)
        return [
            PutResult(id=item.id, fused_tokens=int(item.fused_tokens.shape[0]), created=bool(flag))
            for item, flag in zip(items, created, strict=True)
        ]

    async def delete(self, demonstration_id: str) -> bool:
        self._cache.pop(demonstration_id, None)
        return bool(await self._delete_demo(keys=[], args=[self.prefix, demonstration_id]))

    async def delete_set(self, name: str) -> bool:
        return bool(await self._delete_set(keys=[], args=[self.prefix, name]))

    # -- reads ------------------------------------------------------------------------------------
    async def existing(self, ids: Sequence[str]) -> set[str]:
        async with self.client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.exists(self._demo_key(i))
            flags = await pipe.execute()
        return {i for i, flag in zip(ids, flags, strict=True) if flag}

    async def get_many(self, ids: Sequence[str]) -> list[DemonstrationRecord]:
        """Records in the order asked; raises ``UnknownDemonstrationError`` naming every missing id."""
        unique = list(dict.fromkeys(ids))
        cached = {i: r for i in unique if (r := self._cache.get(i)) is not None}
        misses = [i for i in unique if i not in cached]
        async with self.client.pipeline(transaction=False) as pipe:
            for i in cached:
                pipe.exists(self._demo_key(i))
            if misses:
                pipe.mget([self._demo_key(i) for i in misses])
            replies = await pipe.execute()
        still_there = replies[: len(cached)]
        blobs = replies[len(cached)] if misses else []
        found: dict[str, DemonstrationRecord] = {}
        missing: list[str] = []
        for (i, record), exists in zip(cached.items(), still_there, strict=True):
            if exists:
                found[i] = record
            else:  # deleted elsewhere
                self._cache.pop(i, None)
                missing.append(i)
        for i, blob in zip(misses, blobs, strict=True):
            if blob is None:
                missing.append(i)
                continue
            found[i] = self._cache[i] = await self._decode_or_evict(i, blob)
        self.cache_hits += sum(1 for exists in still_there if exists)
        self.cache_misses += len(misses)
        if missing:
            gone = set(missing)
            raise UnknownDemonstrationError([i for i in unique if i in gone])  # in the order asked
        return [found[i] for i in ids]

    async def get(self, demonstration_id: str) -> DemonstrationRecord:
        return (await self.get_many([demonstration_id]))[0]

    async def sets_of(self, demonstration_id: str) -> list[str]:
        names = await self.client.smembers(f"{self.prefix}demo-sets:{demonstration_id}")
        return sorted(n.decode() for n in names)

    async def get_set(self, name: str) -> list[str]:
        ids = await self.client.lrange(f"{self.prefix}set:{name}", 0, -1)
        if not ids:
            raise UnknownSetError(name)
        return [i.decode() for i in ids]

    async def list_sets(self) -> list[str]:
        return sorted(n.decode() for n in await self.client.smembers(f"{self.prefix}sets"))

    async def _decode_or_evict(self, demonstration_id: str, blob: bytes) -> DemonstrationRecord:
        try:
            return decode_record(blob, hidden_size=self.hidden_size)
        except CodecError as exc:
            await self.delete(demonstration_id)
            raise CorruptRecordError(demonstration_id, str(exc)) from exc
