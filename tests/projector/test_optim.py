"""The learning-rate schedule and held-out loss average every trainer uses."""

from __future__ import annotations

import math

import pytest

from projector.optim import token_weighted_loss, warmup_cosine_lr


def test_warmup_is_linear_then_the_cosine_reaches_the_floor() -> None:
    assert [warmup_cosine_lr(s, 100, 1.0, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine_lr(4, 100, 1.0, 4) == 1.0  # the decay starts at the base rate
    assert warmup_cosine_lr(52, 100, 1.0, 4) == pytest.approx(0.5)  # half-way down the cosine
    assert warmup_cosine_lr(100, 100, 1.0, 4) == pytest.approx(0.0, abs=1e-15)
    assert warmup_cosine_lr(100, 100, 2.0, 4, floor=0.1) == pytest.approx(0.2)
    assert warmup_cosine_lr(500, 100, 2.0, 4, floor=0.1) == pytest.approx(0.2)  # past the end: the floor
    # projector training's shape (floor 0.1), written out
    step, total, base, warmup = 37, 200, 3e-6, 10
    progress = (step - warmup) / (total - warmup)
    expected = base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert warmup_cosine_lr(step, total, base, warmup, floor=0.1) == expected


def test_heldout_loss_is_weighted_by_tokens() -> None:
    items = [(2.0, 1), (1.0, 3), (4.0, 4)]  # (mean loss, tokens)
    starts = []

    def chunk_loss(chunk, start):
        starts.append(start)
        return sum(m * n for m, n in chunk), sum(n for _, n in chunk)

    assert token_weighted_loss(items, 2, chunk_loss) == pytest.approx((2 + 3 + 16) / 8)
    assert starts == [0, 2]
    assert token_weighted_loss([], 2, chunk_loss) == 0.0
