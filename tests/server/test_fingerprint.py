"""The bank fingerprints of the built-in models are pinned.

A fingerprint names every stored fused-token tensor: if a refactoring changed one by accident, every
deployment's bank would silently go cold (and a wrong change could mix tensors of different
projectors). A deliberate change (a new connector, a retrained projector) updates the pin here, in the
same commit, with the reason in its message. Models are built under a fresh temporary cache directory
here: the fingerprint must not depend on where a model lives.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.app import bank_fingerprint, load_encoder
from server.settings import Settings

PINNED = {
    "tiny": "ffbe0676777bacb2",
    "aim-mini": "5e00d8d22911d364",
}


@pytest.mark.parametrize("model", sorted(PINNED))
def test_builtin_model_fingerprints_are_unchanged(model: str, tmp_path: Path):
    if model == "aim-mini":
        pytest.importorskip("gguf", reason="aim-mini's weight packages are not installed")
    encoder = load_encoder(Settings(model=model, cache_dir=tmp_path / "cache", dtype="float32"))
    assert bank_fingerprint(encoder) == PINNED[model]
