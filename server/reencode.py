"""Rebuild a bank made under one fingerprint under the current backbone and projector.

A new projector (or connector, or template) gives fused tokens a new fingerprint, and the
demonstrations registered under the old one stop being served. Where their images were kept
(``AIM_BANK_KEEP_SOURCES``), every demonstration is encoded again from its image and text, under the
same id and with the same metadata, in every namespace, and every set is rebuilt in its order.
Resumable: demonstrations already present under the new fingerprint are not encoded again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bank import DemonstrationBank, decode_record, demonstration_id
from projector.encoder import AimEncoder
from projector.images import ImageError, decode_image
from server.demonstrations.serving import encode_record


@dataclass
class ReencodeSummary:
    encoded: int = 0
    already_there: int = 0
    sets: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # "namespace/id" -> why


async def reencode(
    source: DemonstrationBank,
    target: DemonstrationBank,
    encoder: AimEncoder,
    *,
    max_image_side: int,
    progress: bool = True,
) -> ReencodeSummary:
    """Everything of ``source`` (an old fingerprint) into ``target`` (the current one)."""
    from tqdm import tqdm

    if source.fingerprint == target.fingerprint:
        raise ValueError("the source fingerprint is the current one: nothing to re-encode")
    summary = ReencodeSummary()
    for namespace in await source.namespaces():
        old, new = source.in_namespace(namespace), target.in_namespace(namespace)
        records = await old.raw_records()
        present = await new.existing([i for i, _ in records])
        for demonstration_id_, blob in tqdm(
            records, desc=f"reencode {namespace or 'shared'}", disable=not progress
        ):
            where = f"{namespace or '-'}/{demonstration_id_}"
            if demonstration_id_ in present:
                summary.already_there += 1
                continue
            record = decode_record(blob)
            image_bytes = await old.source(demonstration_id_)
            if image_bytes is None:
                summary.skipped[where] = "no source image was kept (AIM_BANK_KEEP_SOURCES was off)"
                continue
            if demonstration_id(image_bytes, record.text) != demonstration_id_:
                summary.skipped[where] = "the kept image and text do not hash to the demonstration's id"
                continue
            try:
                # Decoded as registration decodes it (same reduction on arrival), so the fused tokens are
                # the ones a fresh registration under the new projector would store.
                image = decode_image(image_bytes, max_side=max_image_side)
            except ImageError as exc:
                summary.skipped[where] = f"the kept image does not decode: {exc}"
                continue
            new_record = await encode_record(encoder, record.id, image, record.text, record.metadata)
            await new.put_many([new_record], sources={record.id: image_bytes})
            summary.encoded += 1
        moved = set(await new.existing([i for i, _ in records]))
        for name in await old.list_sets():
            ids = [i for i in await old.get_set(name) if i in moved]
            if ids:
                await new.add_to_set(ids, name)
                summary.sets += 1
    return summary
