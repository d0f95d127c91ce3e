"""Demonstration logic: validate everything, encode what is new, then write everything at once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from PIL import Image

from bank import (
    DemonstrationBank,
    DemonstrationRecord,
    UnknownDemonstrationError,
    UnknownSetError,
    demonstration_id,
)
from projector.encoder import AimEncoder
from server.demonstrations.protocol import (
    AddToSetRequest,
    Demonstration,
    DemonstrationDeleted,
    DemonstrationSet,
    RegisteredItem,
    RegisterRequest,
    RegisterResponse,
    SetDeleted,
    SetItemsAdded,
    SetList,
    SetSummary,
)
from server.errors import APIError, NotFoundError, PayloadTooLargeError
from server.media import ImageDecoder, ImageField
from server.metrics import Metrics
from server.settings import Settings


@dataclass(frozen=True)
class _Checked:
    id: str
    image: Image.Image
    text: str
    metadata: dict
    data: bytes  # the image as received: what the id hashes, and the source kept with AIM_BANK_KEEP_SOURCES


def check_text(text: str, *, param: str, max_chars: int) -> None:
    if not text.strip():
        raise APIError("must not be empty", param=param, code="empty_text")
    if len(text) > max_chars:
        raise APIError(f"longer than the limit of {max_chars} characters", param=param, code="text_too_long")


class DemonstrationService:
    def __init__(
        self,
        encoder: AimEncoder,
        bank: DemonstrationBank,
        settings: Settings,
        metrics: Metrics,
        images: ImageDecoder,
    ) -> None:
        self.encoder = encoder
        self.images = images
        self.bank = bank
        self.settings = settings
        self.metrics = metrics

    async def _check(self, request: RegisterRequest) -> list[_Checked]:
        s = self.settings
        if len(request.items) > s.max_items_per_request:
            raise APIError(
                f"{len(request.items)} items, more than the limit of {s.max_items_per_request}",
                param="items",
                code="too_many_items",
            )
        for i, item in enumerate(request.items):
            check_text(item.text, param=f"items[{i}].text", max_chars=s.max_text_chars)
            metadata = item.metadata or {}
            if len(json.dumps(metadata, separators=(",", ":"))) > s.max_metadata_bytes:
                raise PayloadTooLargeError(
                    f"larger than the limit of {s.max_metadata_bytes} bytes as JSON",
                    param=f"items[{i}].metadata",
                    code="metadata_too_large",
                )
        # Images last: every cheap check of every item has passed before any image is decoded.
        fields = [ImageField(item.image, f"items[{i}].image") for i, item in enumerate(request.items)]
        images = await self.images.decode(fields)
        return [
            _Checked(demonstration_id(d.data, item.text), d.image, item.text, item.metadata or {}, d.data)
            for d, item in zip(images, request.items, strict=True)
        ]

    async def register(self, request: RegisterRequest) -> RegisterResponse:
        checked = await self._check(request)  # every item is valid before anything is encoded or written
        unique = {c.id: c for c in checked}
        # Known demonstrations join the set by id: their tensors are never read, decoded or rewritten.
        counts = await self.bank.fused_token_counts(list(unique))
        records: dict[str, DemonstrationRecord] = {}
        while True:
            todo = [c for c in unique.values() if c.id not in counts and c.id not in records]
            for record in await encode_records(
                self.encoder,
                [(c.id, c.image, c.text, c.metadata) for c in todo],
                batch_size=self.settings.encode_batch_size,
            ):
                records[record.id] = record
            try:
                sources = {i: unique[i].data for i in records} if self.settings.bank_keep_sources else None
                created = await self.bank.put_many(
                    [records.get(i, i) for i in unique], set_name=request.set, sources=sources
                )
                break
            except UnknownDemonstrationError as exc:
                # Deleted (by another request or replica) between the check and the write, and the
                # script wrote nothing: encode those too and write again. Each round moves at least
                # one id from known to encoded, so this ends.
                for i in exc.ids:
                    counts.pop(i, None)
        counts.update((i, r.num_fused_tokens) for i, r in records.items())
        was_created = dict(zip(unique, created, strict=True))
        self.metrics.demonstrations_registered.inc(sum(created))
        items, seen = [], set()
        for c in checked:  # one answer per item, in request order; a repeat within the request is not new
            items.append(
                RegisteredItem(
                    id=c.id, fused_tokens=counts[c.id], created=was_created[c.id] and c.id not in seen
                )
            )
            seen.add(c.id)
        return RegisterResponse(set=request.set, items=items)

    async def get(self, demonstration_id: str) -> Demonstration:
        try:
            record = await self.bank.get(demonstration_id)
        except UnknownDemonstrationError:
            raise _unknown_demonstration(demonstration_id, "id") from None
        return Demonstration(
            id=record.id,
            text=record.text,
            metadata=record.metadata,
            fused_tokens=record.num_fused_tokens,
            image_tokens=record.image_tokens,
            raw_tokens=record.raw_tokens,
            created_at=record.created_at,
            sets=await self.bank.sets_of(demonstration_id),
        )

    async def delete(self, demonstration_id: str) -> DemonstrationDeleted:
        if not await self.bank.delete(demonstration_id):
            raise _unknown_demonstration(demonstration_id, "id")
        return DemonstrationDeleted(id=demonstration_id)

    async def get_set(self, name: str, *, offset: int, limit: int) -> DemonstrationSet:
        try:
            ids, size = await self.bank.set_page(name, offset, limit)
        except UnknownSetError:
            raise unknown_set(name, "name") from None
        return DemonstrationSet(name=name, ids=ids, size=size, offset=offset, limit=limit)

    async def list_sets(self, *, offset: int, limit: int) -> SetList:
        page, total = await self.bank.set_sizes(offset, limit)
        return SetList(
            sets=[SetSummary(name=n, size=size) for n, size in page], total=total, offset=offset, limit=limit
        )

    async def add_to_set(self, name: str, request: AddToSetRequest) -> SetItemsAdded:
        """Append registered demonstrations by id: nothing is encoded, read or rewritten."""
        try:
            await self.bank.add_to_set(request.ids, name)
        except UnknownDemonstrationError as exc:
            first = request.ids.index(exc.ids[0])
            raise _unknown_demonstration(exc.ids[0], f"ids[{first}]") from None
        return SetItemsAdded(name=name, size=await self.bank.set_size(name))

    async def delete_set(self, name: str) -> SetDeleted:
        if not await self.bank.delete_set(name):
            raise unknown_set(name, "name")
        return SetDeleted(name=name)


async def encode_records(
    encoder: AimEncoder, items: list[tuple[str, Image.Image, str, dict]], *, batch_size: int
) -> list[DemonstrationRecord]:
    """Demonstrations ``(id, image, text, metadata)`` encoded now, as the bank stores them, in order.

    ``batch_size`` demonstrations share one backbone forward (registration: AIM_ENCODE_BATCH_SIZE). The
    one function that makes records: registration and re-encoding (``encode_record``, one at a time)
    store the same fields, and fused tokens equal up to float rounding between batch sizes.
    """
    if not items:
        return []
    fused = await asyncio.to_thread(
        encoder.encode_demonstrations, [(image, text) for _, image, text, _ in items], batch_size=batch_size
    )
    return [
        DemonstrationRecord(
            id=demonstration_id,
            fused_tokens=f.fused_tokens,
            text=text,
            metadata=metadata,
            image_tokens=f.image_tokens,
            raw_tokens=f.raw_tokens,
            image_embedding=f.image_embedding,
        )
        for (demonstration_id, _, text, metadata), f in zip(items, fused, strict=True)
    ]


async def encode_record(
    encoder: AimEncoder, demonstration_id: str, image: Image.Image, text: str, metadata: dict
) -> DemonstrationRecord:
    """One demonstration encoded alone, as the bank stores it."""
    (record,) = await encode_records(encoder, [(demonstration_id, image, text, metadata)], batch_size=1)
    return record


def _unknown_demonstration(demonstration_id: str, param: str) -> NotFoundError:
    return NotFoundError(
        f"demonstration {demonstration_id!r} does not exist", param=param, code="demonstration_not_found"
    )


def unknown_set(name: str, param: str) -> NotFoundError:
    return NotFoundError(f"set {name!r} does not exist", param=param, code="set_not_found")
