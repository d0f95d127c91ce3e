"""The fingerprint scopes every key: fused tokens from another backbone, projector, extraction
setting or dtype live under another fingerprint and are never mixed in."""

import hashlib
import json
from typing import Any

FINGERPRINT_HEX_CHARS = 16


def fingerprint(*, backbone: dict[str, Any], projector_digest: str, layer: int, dtype: str) -> str:
    payload = {"backbone": backbone, "projector": projector_digest, "layer": layer, "dtype": dtype}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:FINGERPRINT_HEX_CHARS]
