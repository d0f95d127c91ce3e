"""One stored demonstration as one self-describing blob.

The blob is a safetensors file: an 8-byte header length, a JSON header (dtype, shape, offsets and a
string-to-string ``__metadata__`` map), then the raw little-endian tensor bytes. The metadata carries
the format version, a sha256 of the tensor bytes, and the demonstration's text and metadata, so one
SET writes everything atomically. Decoding never unpickles anything.

Format 2 adds an optional ``image_embedding`` tensor (1-D float32, with its own sha256): the query-
independent image vector that per-query selection ranks by. It can be read alone, from the header's
offsets, without the fused tokens. Format-1 records (no embedding) still decode.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load, save

FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")
TENSOR_NAME = "fused_tokens"
EMBEDDING_NAME = "image_embedding"
ALLOWED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_HEADER_BYTES = 16 * 1024 * 1024


class CodecError(ValueError):
    """The bytes are not a valid stored demonstration."""


@dataclass(frozen=True)
class DemonstrationRecord:
    """A demonstration as stored; written with ``created_at`` 0, which the bank sets on write."""

    id: str
    fused_tokens: torch.Tensor  # [n, hidden]
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    image_tokens: int = 0
    raw_tokens: int = 0  # cost as an ordinary multimodal prompt segment: image tokens + text tokens
    image_embedding: torch.Tensor | None = None  # [d] float32: what per-query selection ranks by

    @property
    def num_fused_tokens(self) -> int:
        return int(self.fused_tokens.shape[0])


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # Reinterpret as bytes so bfloat16 (which numpy lacks) hashes the same way as the others.
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def check_fused_tokens(t: torch.Tensor, *, hidden_size: int | None = None) -> None:
    """Every fused-token tensor crossing a boundary passes here."""
    if t.dtype not in ALLOWED_DTYPES:
        raise CodecError(f"fused tokens have dtype {t.dtype}; allowed: {ALLOWED_DTYPES}")
    if t.dim() != 2:
        raise CodecError(f"fused tokens must be 2-D [tokens, hidden], got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise CodecError("fused tokens are empty")
    if hidden_size is not None and t.shape[1] != hidden_size:
        raise CodecError(f"fused tokens have hidden size {t.shape[1]}, expected {hidden_size}")
    if not torch.isfinite(t).all():
        raise CodecError("fused tokens contain NaN or infinity")


def encode_record(record: DemonstrationRecord) -> bytes:
    tensor = record.fused_tokens.detach().to("cpu").contiguous()
    check_fused_tokens(tensor)
    meta = {
        "aim_format": FORMAT_VERSION,
        "id": record.id,
        "sha256": hashlib.sha256(_tensor_bytes(tensor)).hexdigest(),
        "text": record.text,
        "metadata": json.dumps(record.metadata, separators=(",", ":")),
        "created_at": repr(record.created_at),
        "image_tokens": str(record.image_tokens),
        "raw_tokens": str(record.raw_tokens),
    }
    tensors = {TENSOR_NAME: tensor}
    if record.image_embedding is not None:
        embedding = check_image_embedding(
            record.image_embedding.detach().to("cpu", torch.float32).contiguous()
        )
        tensors[EMBEDDING_NAME] = embedding
        meta["image_embedding_sha256"] = hashlib.sha256(_tensor_bytes(embedding)).hexdigest()
    return save(tensors, metadata=meta)


def check_image_embedding(t: torch.Tensor) -> torch.Tensor:
    if t.dtype != torch.float32 or t.dim() != 1 or t.shape[0] == 0:
        raise CodecError(
            f"image embedding must be a non-empty 1-D float32 tensor, got {t.dtype} {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise CodecError("image embedding contains NaN or infinity")
    return t


def image_embedding_span(head: bytes) -> tuple[int, int] | None:
    """Byte range of the image embedding within the blob, from its header alone; None if it has none."""
    entry = _read_header(head).get(EMBEDDING_NAME)
    if entry is None:
        return None
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if entry.get("dtype") != "F32" or not (isinstance(offsets, list) and len(offsets) == 2):
        raise CodecError(f"record header has a malformed {EMBEDDING_NAME!r} entry")
    start = header_end(head)
    return start + int(offsets[0]), start + int(offsets[1])


def embedding_from_bytes(data: bytes) -> torch.Tensor:
    return check_image_embedding(torch.frombuffer(bytearray(data), dtype=torch.float32))


def header_end(head: bytes) -> int:
    """Where a blob's header ends, from its first 8 bytes: the tensor data starts there."""
    if len(head) < 8:
        raise CodecError("record is truncated")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > _MAX_HEADER_BYTES:
        raise CodecError("record header length is out of range")
    return 8 + header_len


def _read_header(head: bytes) -> dict[str, Any]:
    """The JSON header of a blob; ``head`` may stop anywhere after the header."""
    end = header_end(head)
    if end > len(head):
        raise CodecError("record header length is out of range")
    try:
        header = json.loads(head[8:end])
    except ValueError as exc:
        raise CodecError(f"record header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CodecError("record header is not a JSON object")
    return header


def num_fused_tokens(head: bytes) -> int:
    """The fused-token count from a blob's header alone: the tensor bytes need not be read."""
    entry = _read_header(head).get(TENSOR_NAME)
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not (isinstance(shape, list) and len(shape) == 2 and isinstance(shape[0], int)):
        raise CodecError(f"record header has no 2-D {TENSOR_NAME!r} tensor")
    return shape[0]


def _read_metadata(blob: bytes) -> dict[str, str]:
    meta = _read_header(blob).get("__metadata__")
    if not isinstance(meta, dict):
        raise CodecError("record has no metadata")
    return meta


def decode_record(blob: bytes, *, hidden_size: int | None = None) -> DemonstrationRecord:
    meta = _read_metadata(blob)
    version = meta.get("aim_format")
    if version not in READABLE_VERSIONS:
        raise CodecError(f"record format {version!r} is not one of {READABLE_VERSIONS}")
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise CodecError(f"record tensor data is malformed: {exc}") from exc
    expected = {TENSOR_NAME, EMBEDDING_NAME} if version == "2" else {TENSOR_NAME}
    if TENSOR_NAME not in tensors or not set(tensors) <= expected:
        raise CodecError(f"record holds tensors {sorted(tensors)}, expected {sorted(expected)}")
    tensor = tensors[TENSOR_NAME]
    check_fused_tokens(tensor, hidden_size=hidden_size)
    if hashlib.sha256(_tensor_bytes(tensor)).hexdigest() != meta.get("sha256"):
        raise CodecError("record checksum does not match its tensor bytes")
    embedding = tensors.get(EMBEDDING_NAME)
    if embedding is not None:
        check_image_embedding(embedding)
        if hashlib.sha256(_tensor_bytes(embedding)).hexdigest() != meta.get("image_embedding_sha256"):
            raise CodecError("record checksum does not match its image embedding bytes")
    try:
        return DemonstrationRecord(
            id=meta["id"],
            fused_tokens=tensor,
            text=meta["text"],
            metadata=json.loads(meta["metadata"]),
            created_at=float(meta["created_at"]),
            image_tokens=int(meta["image_tokens"]),
            raw_tokens=int(meta["raw_tokens"]),
            image_embedding=embedding,
        )
    except (KeyError, ValueError) as exc:
        raise CodecError(f"record metadata is incomplete: {exc}") from exc
