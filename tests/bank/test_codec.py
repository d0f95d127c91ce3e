"""The stored blob: byte-identical round trips, and every kind of damage refused."""

import json
import struct

import pytest
import torch

from bank.codec import CodecError, DemonstrationRecord, decode_record, encode_record
from bank.ids import demonstration_id


def record(t: torch.Tensor) -> DemonstrationRecord:
    return DemonstrationRecord(
        id="a" * 32,
        fused_tokens=t,
        text="Q: what? A: ünïcode ✓",
        metadata={"k": [1, 2]},
        created_at=1.5,
        image_tokens=16,
        raw_tokens=21,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_byte_identical(dtype):
    t = torch.randn(7, 128).to(dtype)
    back = decode_record(encode_record(record(t)), hidden_size=128)
    assert back.fused_tokens.dtype == dtype
    assert back.fused_tokens.view(torch.uint8).numpy().tobytes() == t.view(torch.uint8).numpy().tobytes()
    assert (back.text, back.metadata, back.created_at, back.image_tokens, back.raw_tokens) == (
        "Q: what? A: ünïcode ✓",
        {"k": [1, 2]},
        1.5,
        16,
        21,
    )


def test_flipped_tensor_byte_fails_checksum():
    blob = bytearray(encode_record(record(torch.ones(3, 8))))
    blob[-1] ^= 0x01
    with pytest.raises(CodecError, match="checksum"):
        decode_record(bytes(blob))


def _rewrite_metadata(blob: bytes, **changes: str) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    return struct.pack("<Q", len(new)) + new + blob[8 + n :]


def test_unknown_format_version_is_refused():
    blob = _rewrite_metadata(encode_record(record(torch.ones(3, 8))), aim_format="999")
    with pytest.raises(CodecError, match="format"):
        decode_record(blob)


@pytest.mark.parametrize(
    "blob", [b"", b"\x00" * 4, struct.pack("<Q", 1 << 40) + b"{}", struct.pack("<Q", 2) + b"[]"]
)
def test_malformed_bytes_are_refused(blob):
    with pytest.raises(CodecError):
        decode_record(blob)


def test_hidden_size_mismatch_is_refused():
    with pytest.raises(CodecError, match="hidden size 8, expected 16"):
        decode_record(encode_record(record(torch.ones(3, 8))), hidden_size=16)


@pytest.mark.parametrize(
    "bad",
    [torch.ones(3, 8, dtype=torch.int64), torch.ones(8), torch.ones(0, 8), torch.tensor([[float("nan")]])],
)
def test_bad_tensors_are_not_encoded(bad):
    with pytest.raises(CodecError):
        encode_record(record(bad))


def test_demonstration_id_is_a_content_hash():
    assert demonstration_id(b"img", "text") == demonstration_id(b"img", "text")
    assert demonstration_id(b"img", "text") != demonstration_id(b"img", "text!")
    # the boundary between image bytes and text cannot be shifted into a collision
    assert demonstration_id(b"imgt", "ext") != demonstration_id(b"img", "text")
    assert len(demonstration_id(b"", "x")) == 32
