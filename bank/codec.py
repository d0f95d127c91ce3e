"""One stored demonstration as one self-describing blob.

The blob is a safetensors file: an 8-byte header length, a JSON header (dtype, shape, offsets and a
string-to-string ``__metadata__`` map), then the raw little-endian tensor bytes. The metadata carries
the format version, a sha256 of the tensor bytes, and the demonstration's text and metadata, so one
SET writes everything atomically. Decoding never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load, save

FORMAT_VERSION = "1"
TENSOR_NAME = "fused_tokens"
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
    return save({TENSOR_NAME: tensor}, metadata=meta)


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
    if meta.get("aim_format") != FORMAT_VERSION:
        raise CodecError(f"record format {meta.get('aim_format')!r} is not {FORMAT_VERSION!r}")
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise CodecError(f"record tensor data is malformed: {exc}") from exc
    if set(tensors) != {TENSOR_NAME}:
        raise CodecError(f"record holds tensors {sorted(tensors)}, expected [{TENSOR_NAME!r}]")
    tensor = tensors[TENSOR_NAME]
    check_fused_tokens(tensor, hidden_size=hidden_size)
    if hashlib.sha256(_tensor_bytes(tensor)).hexdigest() != meta.get("sha256"):
        raise CodecError("record checksum does not match its tensor bytes")
    try:
        return DemonstrationRecord(
            id=meta["id"],
            fused_tokens=tensor,
            text=meta["text"],
            metadata=json.loads(meta["metadata"]),
            created_at=float(meta["created_at"]),
            image_tokens=int(meta["image_tokens"]),
            raw_tokens=int(meta["raw_tokens"]),
        )
    except (KeyError, ValueError) as exc:
        raise CodecError(f"record metadata is incomplete: {exc}") from exc
