"""What every trainer in the project shares: the learning-rate schedule and the held-out loss average.

Used by projector training (``projector.training.trainer``) and aim-mini's connector training
(``projector.models.aim_mini.train_connector``); a leaf module, so both import it downward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def warmup_cosine_lr(step: int, total: int, base: float, warmup: int, *, floor: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps to ``base``, then cosine decay to ``floor * base`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def token_weighted_loss(
    items: Sequence[T], batch_size: int, chunk_loss: Callable[[Sequence[T], int], tuple[float, int]]
) -> float:
    """Mean per-token loss over ``items`` in batches, without gradients.

    ``chunk_loss(chunk, start)`` returns the chunk's summed token loss and its token count (``start``
    is the chunk's index in ``items``); the result is the sum over chunks divided by the tokens.
    """
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            loss_sum, n = chunk_loss(items[start : start + batch_size], start)
            total += loss_sum
            tokens += n
    return total / max(tokens, 1)
