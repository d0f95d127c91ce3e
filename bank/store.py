"""The demonstration bank on Redis.

Layout, all under ``aim:v1:{<fingerprint>}:`` (the braces are a Redis Cluster hash tag, so every key
of one fingerprint lives on one slot and the Lua scripts below stay atomic there too), or under
``aim:v1:{<fingerprint>}:t:<tenant>:`` for a tenant's namespace (see ``in_namespace``):

- ``demo:<id>``         one blob per demonstration (see ``bank.codec``)
- ``set:<name>``        list of ids in registration order
- ``set-members:<name>`` the same ids as a set, so appends are idempotent
- ``demo-sets:<id>``    the sets an id belongs to, so deleting it cleans every set
- ``source:<id>``       the image it was made from, when sources are kept (``aim bank reencode``)
- ``sets-version``      moved by every change to any set (per-query selection caches on it)
- ``sets``              all set names

Every mutation is one Lua script: it happens completely or not at all.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis
import redis.asyncio as aioredis
import torch
from cachetools import LRUCache

from bank.codec import (
    CodecError,
    DemonstrationRecord,
    decode_record,
    embedding_from_bytes,
    encode_record,
    header_end,
    image_embedding_span,
    num_fused_tokens,
)
from bank.scripts import DELETE_DEMO, DELETE_SET, PUT

KEY_VERSION = "v1"
# Bytes read to find a blob's token count: its header (shape, offsets, text and metadata) usually fits.
HEADER_PROBE_BYTES = 4096

log = logging.getLogger(__name__)


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


FSYNC_TIMEOUT_MS = 5000
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass
class _CacheStats:
    hits: int = 0
    misses: int = 0


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
        wait_for_fsync: bool = False,
    ) -> None:
        self.client = client
        self.fingerprint = fingerprint
        self.hidden_size = hidden_size
        self.wait_for_fsync = wait_for_fsync
        self.prefix = f"aim:{KEY_VERSION}:{{{fingerprint}}}:"
        # Keyed by full Redis key: namespaces share the cache but never each other's records.
        self._cache: LRUCache[str, DemonstrationRecord] = LRUCache(
            maxsize=max(cache_bytes, 1), getsizeof=lambda r: r.fused_tokens.nbytes + 512
        )
        self._put = client.register_script(PUT)
        self._delete_demo = client.register_script(DELETE_DEMO)
        self._delete_set = client.register_script(DELETE_SET)
        self._stats = _CacheStats()

    def in_namespace(self, namespace: str | None) -> DemonstrationBank:
        """The same bank seen from one tenant's namespace (None: the shared one).

        A view: one client, one LRU, one set of counters. A demonstration registered by two tenants has
        the same id in both (ids are content hashes) but two independent records; one tenant's ids and
        set names do not exist in another's namespace.
        """
        if namespace is None:
            return self
        if not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace {namespace!r} must be letters, digits, '_' or '-'")
        view = copy.copy(self)
        view.prefix = f"{self.prefix}t:{namespace}:"
        return view

    @property
    def cache_hits(self) -> int:
        return self._stats.hits

    @property
    def cache_misses(self) -> int:
        return self._stats.misses

    def _demo_key(self, demonstration_id: str) -> str:
        return f"{self.prefix}demo:{demonstration_id}"

    async def _durable(self) -> None:
        """With WAITAOF: return only once this write is fsynced to Redis's append-only file."""
        if not self.wait_for_fsync:
            return
        local, _replicas = await self.client.execute_command("WAITAOF", 1, 0, FSYNC_TIMEOUT_MS)
        if int(local) < 1:  # answered as unreachable: the caller retries, the write itself is idempotent
            raise redis.exceptions.TimeoutError(f"append-only fsync not confirmed in {FSYNC_TIMEOUT_MS} ms")

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    # -- writes -----------------------------------------------------------------------------------
    async def put_many(
        self,
        entries: Sequence[DemonstrationRecord | str],
        *,
        set_name: str | None = None,
        sources: Mapping[str, bytes] | None = None,
    ) -> list[bool]:
        """Store the records and append every entry to ``set_name`` in order, atomically; say which
        records were created (an id stored before is left as it is).

        A plain id stands for a demonstration already stored: it joins the set without its tensor
        being read or written. If any such id is missing, ``UnknownDemonstrationError`` names them all
        and nothing is written. ``sources`` (id -> image bytes) are kept beside new records.
        """
        now = time.time()
        sources = sources or {}
        args: list[Any] = [self.prefix, set_name or ""]
        for entry in entries:
            if isinstance(entry, str):
                args += [entry, b"", b""]
            else:
                args += [entry.id, encode_record(replace(entry, created_at=now)), sources.get(entry.id, b"")]
        missing, created = await self._put(keys=[], args=args)
        if missing:
            raise UnknownDemonstrationError([i.decode() for i in missing])
        await self._durable()
        return [bool(flag) for flag in created]

    async def add_to_set(self, ids: Sequence[str], set_name: str) -> None:
        """Append stored demonstrations to ``set_name`` (in order, skipping members), atomically; no
        tensor is read, decoded or rewritten. Unknown ids raise ``UnknownDemonstrationError`` and
        nothing is written."""
        if not set_name:
            raise ValueError("add_to_set needs a set name")
        await self.put_many(list(ids), set_name=set_name)

    async def delete(self, demonstration_id: str) -> bool:
        self._cache.pop(self._demo_key(demonstration_id), None)
        existed = bool(await self._delete_demo(keys=[], args=[self.prefix, demonstration_id]))
        await self._durable()
        return existed

    async def delete_set(self, name: str) -> bool:
        existed = bool(await self._delete_set(keys=[], args=[self.prefix, name]))
        await self._durable()
        return existed

    # -- reads ------------------------------------------------------------------------------------
    async def existing(self, ids: Sequence[str]) -> set[str]:
        async with self.client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.exists(self._demo_key(i))
            flags = await pipe.execute()
        return {i for i, flag in zip(ids, flags, strict=True) if flag}

    async def _headers(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The complete safetensors headers of the stored ones among ``ids``, tensor bytes unread
        (one batched call; a second one only for headers longer than ``HEADER_PROBE_BYTES``).

        A blob whose header is damaged is removed and left out, so that registering it again
        re-creates it.
        """
        async with self.client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.getrange(self._demo_key(i), 0, HEADER_PROBE_BYTES - 1)
            probes = dict(zip(ids, await pipe.execute(), strict=True))
        heads: dict[str, bytes] = {}
        long: dict[str, int] = {}  # id -> where its header ends, past the probe
        for i, head in probes.items():
            if not head:  # GETRANGE of a missing key is empty
                continue
            try:
                end = header_end(head)
            except CodecError as exc:
                await self._evict_damaged(i, exc)
                continue
            if end > len(head) == HEADER_PROBE_BYTES:
                long[i] = end
            else:
                heads[i] = head
        if long:
            async with self.client.pipeline(transaction=False) as pipe:
                for i, end in long.items():
                    pipe.getrange(self._demo_key(i), 0, end - 1)
                for i, head in zip(long, await pipe.execute(), strict=True):
                    if head:  # else deleted since the first read
                        heads[i] = head
        return heads

    async def fused_token_counts(self, ids: Sequence[str]) -> dict[str, int]:
        """Fused-token counts of the stored ones among ``ids``, read from the blobs' headers only."""
        counts: dict[str, int] = {}
        for i, head in (await self._headers(ids)).items():
            try:
                counts[i] = num_fused_tokens(head)
            except CodecError as exc:
                await self._evict_damaged(i, exc)
        return counts

    async def image_embeddings(self, ids: Sequence[str]) -> dict[str, torch.Tensor | None]:
        """The image embedding of each stored one among ``ids`` (None for a record that has none),
        reading only headers and the embeddings' own bytes, never the fused tokens."""
        spans: dict[str, tuple[int, int] | None] = {}
        for i, head in (await self._headers(ids)).items():
            try:
                spans[i] = image_embedding_span(head)
            except CodecError as exc:
                await self._evict_damaged(i, exc)
        wanted = {i: span for i, span in spans.items() if span is not None}
        async with self.client.pipeline(transaction=False) as pipe:
            for i, (start, end) in wanted.items():
                pipe.getrange(self._demo_key(i), start, end - 1)
            data = dict(zip(wanted, await pipe.execute(), strict=True)) if wanted else {}
        embeddings: dict[str, torch.Tensor | None] = {i: None for i in spans}
        for i, raw in data.items():
            if raw:  # else deleted since its header was read
                embeddings[i] = embedding_from_bytes(raw)
            else:
                embeddings.pop(i)
        return embeddings

    async def source(self, demonstration_id: str) -> bytes | None:
        """The image a demonstration was made from, if sources were kept when it was registered."""
        return await self.client.get(f"{self.prefix}source:{demonstration_id}")

    async def sets_version(self) -> int:
        """A counter every change to any set of this namespace moves: caches of set contents key on it."""
        return int(await self.client.get(f"{self.prefix}sets-version") or 0)

    async def _evict_damaged(self, demonstration_id: str, exc: CodecError) -> None:
        log.warning("stored demonstration %s is corrupt (%s); removed", demonstration_id, exc)
        await self.delete(demonstration_id)

    async def get_many(self, ids: Sequence[str]) -> list[DemonstrationRecord]:
        """Records in the order asked; raises ``UnknownDemonstrationError`` naming every missing id."""
        unique = list(dict.fromkeys(ids))
        cached = {i: r for i in unique if (r := self._cache.get(self._demo_key(i))) is not None}
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
                self._cache.pop(self._demo_key(i), None)
                missing.append(i)
        for i, blob in zip(misses, blobs, strict=True):
            if blob is None:
                missing.append(i)
                continue
            found[i] = self._cache[self._demo_key(i)] = await self._decode_or_evict(i, blob)
        self._stats.hits += sum(1 for exists in still_there if exists)
        self._stats.misses += len(misses)
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

    async def set_page(self, name: str, offset: int, limit: int) -> tuple[list[str], int]:
        """Ids ``offset``..``offset + limit`` of the set in order, and its size, read atomically."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        key = f"{self.prefix}set:{name}"
        async with self.client.pipeline(transaction=True) as pipe:
            ids, size = await pipe.lrange(key, offset, offset + limit - 1).llen(key).execute()
        if size == 0:
            raise UnknownSetError(name)
        return [i.decode() for i in ids], int(size)

    async def set_size(self, name: str) -> int:
        return int(await self.client.llen(f"{self.prefix}set:{name}"))

    async def list_sets(self) -> list[str]:
        return sorted(n.decode() for n in await self.client.smembers(f"{self.prefix}sets"))

    async def set_sizes(self, offset: int, limit: int) -> tuple[list[tuple[str, int]], int]:
        """Set names in sorted order with their sizes, one page of them, and how many sets there are."""
        names = await self.list_sets()
        page = names[offset : offset + limit]
        async with self.client.pipeline(transaction=False) as pipe:
            for name in page:
                pipe.llen(f"{self.prefix}set:{name}")
            sizes = await pipe.execute() if page else []
        # A set emptied between the two reads has gone: leave it out rather than report it empty.
        return [(n, int(s)) for n, s in zip(page, sizes, strict=True) if s], len(names)

    # -- the bank as files (bank.transfer) ------------------------------------------------------------
    async def namespaces(self) -> list[str | None]:
        """The shared namespace (None) and every tenant namespace that holds a demonstration."""
        found: set[str] = set()
        async for key in self.client.scan_iter(match=f"{self.prefix}t:*:demo:*", count=1000):
            found.add(key.decode()[len(self.prefix) + 2 :].split(":", 1)[0])
        return [None, *sorted(found)]

    async def raw_records(self) -> list[tuple[str, bytes]]:
        """Every (id, stored blob) of this namespace, exactly as stored."""
        marker = f"{self.prefix}demo:"
        keys = sorted([k async for k in self.client.scan_iter(match=f"{marker}*", count=1000)])
        blobs = await self.client.mget(keys) if keys else []
        return [(k.decode()[len(marker) :], b) for k, b in zip(keys, blobs, strict=True) if b is not None]

    async def restore(
        self, records: Sequence[tuple[str, bytes]], sources: Mapping[str, bytes] | None = None
    ) -> list[bool]:
        """Store exported blobs byte for byte (each checked first; an id already stored is left as it is),
        with the source images kept beside them where given."""
        for demonstration_id, blob in records:
            record = decode_record(blob, hidden_size=self.hidden_size)  # format, shape and checksum
            if record.id != demonstration_id:
                raise CodecError(f"blob for {demonstration_id} holds demonstration {record.id}")
        args: list[Any] = [self.prefix, ""]
        for demonstration_id, blob in records:
            args += [demonstration_id, blob, (sources or {}).get(demonstration_id, b"")]
        _, created = await self._put(keys=[], args=args)
        await self._durable()
        return [bool(flag) for flag in created]

    async def _decode_or_evict(self, demonstration_id: str, blob: bytes) -> DemonstrationRecord:
        try:
            return decode_record(blob, hidden_size=self.hidden_size)
        except CodecError as exc:
            await self.delete(demonstration_id)
            raise CorruptRecordError(demonstration_id, str(exc)) from exc
