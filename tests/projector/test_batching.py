"""Batched backbone forwards (registration, concurrent queries) against the one-at-a-time results."""

from __future__ import annotations

import pytest
import torch

from projector.backbone import Backbone
from projector.encoder import AimEncoder
from projector.projector import Projector
from tests.helpers import decode_png, png_b64

# A padded batch reduces in another order in attention kernels than a forward of the item alone:
# float rounding, measured <= 4e-6 on the tiny model's hidden states (aim-mini: fused tokens <= 1.4e-6,
# README "Batched encoding and query embedding"). A wrong batch is off by far more: pads attended
# (left padding without the mask) 0.47; rows handed back in the wrong order fail on shape.
TOLERANCE = 2e-5

ITEMS = [
    ("red", "circle", "Q: What color is the shape? A: red"),
    ("blue", "square", "a"),
    ("green", "circle", "Q: What is the shape in this picture, and which colour does it have? A: green"),
    ("yellow", "square", "Q: Colour? A: yellow"),
    ("purple", "circle", "Q: What color is the shape? A: purple, a rather dark one"),
]


def encoder_for(backbone: Backbone) -> AimEncoder:
    # A random (seeded) MLP projector: a batch that fed the projector the wrong rows would show.
    torch.manual_seed(0)
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size, kind="mlp")
    with torch.no_grad():
        for p in projector.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return AimEncoder(backbone, projector, dtype=torch.float32)


def forwards(backbone: Backbone) -> tuple[list[int], object]:
    """Batch sizes of the backbone's forwards from now on (and the hook's handle, to remove it)."""
    sizes: list[int] = []
    handle = backbone.model.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: sizes.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True
    )
    return sizes, handle


def test_a_batched_registration_equals_encoding_one_at_a_time(backbone: Backbone):
    encoder = encoder_for(backbone)
    items = [(decode_png(png_b64(color, shape=shape)), text) for color, shape, text in ITEMS]
    alone = [encoder.encode_demonstration(image, text) for image, text in items]
    sizes, handle = forwards(backbone)
    try:
        batched = encoder.encode_demonstrations(items, batch_size=3)
    finally:
        handle.remove()
    assert sizes == [3, 2]  # two padded forwards, not five
    for one, many in zip(alone, batched, strict=True):
        assert many.fused_tokens.shape == one.fused_tokens.shape
        assert many.fused_tokens.dtype == one.fused_tokens.dtype and many.fused_tokens.is_contiguous()
        assert (many.image_tokens, many.raw_tokens) == (one.image_tokens, one.raw_tokens)
        assert (many.fused_tokens - one.fused_tokens).abs().max().item() <= TOLERANCE
        assert many.image_embedding is not None and one.image_embedding is not None
        assert (many.image_embedding - one.image_embedding).abs().max().item() <= TOLERANCE
    # batch_size 1 is the unbatched path, byte for byte
    for one, again in zip(alone, encoder.encode_demonstrations(items, batch_size=1), strict=True):
        assert torch.equal(one.fused_tokens, again.fused_tokens)


def test_batched_query_embeddings_equal_one_at_a_time(backbone: Backbone):
    encoder = encoder_for(backbone)
    queries = [
        (decode_png(png_b64("green", (80, 60), "square")), "What shape is in the image?", ()),
        (decode_png(png_b64("red")), "Colour?", ()),
        (decode_png(png_b64("blue")), "And this one, which colour is it?", (("user", "Hello there"),)),
    ]
    alone = [encoder.embed_query(image, text, history) for image, text, history in queries]
    sizes, handle = forwards(backbone)
    try:
        batched = encoder.embed_queries(queries)
    finally:
        handle.remove()
    assert sizes == [3]
    for one, many in zip(alone, batched, strict=True):
        assert torch.equal(many.prefix, one.prefix)  # BOS: a row of the embedding table
        assert many.body.shape == one.body.shape and many.image_tokens == one.image_tokens
        assert (many.body - one.body).abs().max().item() <= TOLERANCE
        assert many.image_embedding is not None and one.image_embedding is not None
        assert (many.image_embedding - one.image_embedding).abs().max().item() <= TOLERANCE


def test_batch_size_below_one_is_refused(backbone: Backbone):
    with pytest.raises(ValueError, match="batch_size"):
        encoder_for(backbone).encode_demonstrations([], batch_size=0)
