"""The demonstration bank: fused-token tensors in Redis, keyed by a fingerprint of what made them.

Nothing here knows about HTTP or the engine.
"""

from bank.codec import CodecError, DemonstrationRecord, decode_record, encode_record
from bank.connection import BANK_UNAVAILABLE_ERRORS, RedisConnection, open_redis
from bank.fingerprint import fingerprint
from bank.ids import demonstration_id
from bank.store import (
    CorruptRecordError,
    DemonstrationBank,
    UnknownDemonstrationError,
    UnknownSetError,
)

__all__ = [
    "BANK_UNAVAILABLE_ERRORS",
    "CodecError",
    "CorruptRecordError",
    "DemonstrationBank",
    "DemonstrationRecord",
    "RedisConnection",
    "UnknownDemonstrationError",
    "UnknownSetError",
    "decode_record",
    "demonstration_id",
    "encode_record",
    "fingerprint",
    "open_redis",
]
