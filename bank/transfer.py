"""The bank as files: export the demonstrations and sets of one or more fingerprints to a directory,
and import such a directory back, every blob checked.

Layout of an export (JSON lines and the stored safetensors blobs, byte for byte; nothing pickled)::

    manifest.json                     format, version, time, and per fingerprint what it holds
    <fingerprint>/demonstrations.jsonl {"namespace", "id", "file", "sha256"} per demonstration
    <fingerprint>/sets.jsonl           {"namespace", "name", "ids"} per set, ids in set order
    <fingerprint>/blobs/<namespace>/<id>.safetensors
    <fingerprint>/sources/<namespace>/<id>.image   the kept source image, where there is one

A blob carries its own format version and tensor checksum (``bank.codec``); import also checks each
file's sha256 against the listing and that a blob holds the demonstration it is listed as. Import is
idempotent (a demonstration already stored is kept, sets append only what they lack), so an import
that stopped half-way is completed by running it again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from bank.codec import CodecError, decode_record
from bank.store import KEY_VERSION, DemonstrationBank

EXPORT_FORMAT = "aim-bank-export"
EXPORT_VERSION = 1
SHARED = "_shared"  # the directory of the shared namespace (tenant names cannot start with "_")
_FINGERPRINT_KEY = re.compile(rf"^aim:{KEY_VERSION}:\{{([0-9a-f]+)\}}:".encode())


class TransferError(ValueError):
    """The export directory is not one, or what it holds fails a check."""


@dataclass
class TransferSummary:
    demonstrations: dict[str, int] = field(default_factory=dict)  # per fingerprint
    created: dict[str, int] = field(default_factory=dict)  # import: how many were new
    sets: dict[str, int] = field(default_factory=dict)


async def stored_fingerprints(client: aioredis.Redis) -> list[str]:
    found: set[str] = set()
    async for key in client.scan_iter(match=f"aim:{KEY_VERSION}:{{*", count=1000):
        if m := _FINGERPRINT_KEY.match(key):
            found.add(m.group(1).decode())
    return sorted(found)


def _namespace_dir(namespace: str | None) -> str:
    return namespace or SHARED


async def export_bank(client: aioredis.Redis, out: Path, fingerprints: list[str]) -> TransferSummary:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TransferError(f"{out} is not empty: export into a new directory")
    summary = TransferSummary()
    for fp in fingerprints:
        root = DemonstrationBank(client, fp)
        fp_dir = out / fp
        listing, set_lines = [], []
        for namespace in await root.namespaces():
            bank = root.in_namespace(namespace)
            blob_dir = fp_dir / "blobs" / _namespace_dir(namespace)
            blob_dir.mkdir(parents=True, exist_ok=True)
            for demonstration_id, blob in await bank.raw_records():
                file = blob_dir / f"{demonstration_id}.safetensors"
                file.write_bytes(blob)
                entry = {
                    "namespace": namespace,
                    "id": demonstration_id,
                    "file": str(file.relative_to(fp_dir)),
                    "sha256": hashlib.sha256(blob).hexdigest(),
                }
                source = await bank.source(demonstration_id)
                if source is not None:
                    source_file = fp_dir / "sources" / _namespace_dir(namespace) / f"{demonstration_id}.image"
                    source_file.parent.mkdir(parents=True, exist_ok=True)
                    source_file.write_bytes(source)
                    entry["source"] = str(source_file.relative_to(fp_dir))
                    entry["source_sha256"] = hashlib.sha256(source).hexdigest()
                listing.append(entry)
            for name in await bank.list_sets():
                set_lines.append({"namespace": namespace, "name": name, "ids": await bank.get_set(name)})
        fp_dir.mkdir(parents=True, exist_ok=True)
        _write_jsonl(fp_dir / "demonstrations.jsonl", listing)
        _write_jsonl(fp_dir / "sets.jsonl", set_lines)
        summary.demonstrations[fp], summary.sets[fp] = len(listing), len(set_lines)
    manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": time.time(),
                "fingerprints": {fp: {"demonstrations": summary.demonstrations[fp], "sets": summary.sets[fp]}
                                 for fp in fingerprints}}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return summary


async def import_bank(
    client: aioredis.Redis, src: Path, *, fingerprints: list[str] | None = None, batch: int = 64
) -> TransferSummary:
    src = Path(src)
    manifest = _read_manifest(src)
    available = list(manifest["fingerprints"])
    wanted = fingerprints or available
    missing = [fp for fp in wanted if fp not in available]
    if missing:
        raise TransferError(f"{src} holds no fingerprint {missing}; it holds {available}")
    summary = TransferSummary()
    for fp in wanted:
        fp_dir = src / fp
        listing = _read_jsonl(fp_dir / "demonstrations.jsonl")
        records = _checked_blobs(fp_dir, listing)  # everything is checked before anything is written
        sources = {
            e["id"]: _checked_file(fp_dir, e["source"], e["source_sha256"]) for e in listing if "source" in e
        }
        root = DemonstrationBank(client, fp)
        created = 0
        for namespace in sorted({e["namespace"] for e in listing}, key=lambda n: n or ""):
            bank = root.in_namespace(namespace)
            mine = [records[i] for i, e in enumerate(listing) if e["namespace"] == namespace]
            for start in range(0, len(mine), batch):
                created += sum(await bank.restore(mine[start : start + batch], sources))
        sets = _read_jsonl(fp_dir / "sets.jsonl")
        for entry in sets:
            await root.in_namespace(entry["namespace"]).add_to_set(entry["ids"], entry["name"])
        summary.demonstrations[fp], summary.created[fp], summary.sets[fp] = len(listing), created, len(sets)
    return summary


def _checked_blobs(fp_dir: Path, listing: list[dict]) -> list[tuple[str, bytes]]:
    records = []
    for entry in listing:
        path = fp_dir / entry["file"]
        blob = _checked_file(fp_dir, entry["file"], entry["sha256"])
        try:
            record = decode_record(blob)
        except CodecError as exc:
            raise TransferError(f"{path}: {exc}") from exc
        if record.id != entry["id"]:
            raise TransferError(f"{path} holds demonstration {record.id}, listed as {entry['id']}")
        records.append((entry["id"], blob))
    return records


def _checked_file(fp_dir: Path, name: str, sha256: str) -> bytes:
    path = fp_dir / name
    if not path.resolve().is_relative_to(fp_dir.resolve()):
        raise TransferError(f"{name} points outside the export")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TransferError(f"cannot read {path}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise TransferError(f"{path} does not match its sha256 in demonstrations.jsonl")
    return data


def _read_manifest(src: Path) -> dict:
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise TransferError(f"{src} is not a bank export: {exc}") from exc
    if manifest.get("format") != EXPORT_FORMAT or manifest.get("version") != EXPORT_VERSION:
        raise TransferError(f"{src} is not a version-{EXPORT_VERSION} {EXPORT_FORMAT}")
    return manifest


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise TransferError(f"cannot read {path}: {exc}") from exc
