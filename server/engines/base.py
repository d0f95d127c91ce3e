"""The engine interface the server codes against (after vLLM's ``EngineClient``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineOutput:
    """Cumulative state of one request: each output replaces the previous one."""

    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    num_cached_tokens: int = 0


@dataclass
class EngineStats:
    requests: int = 0
    batches: int = 0
    max_batch_size: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class EngineError(RuntimeError):
    """The engine failed a request for a reason of its own (not the caller's)."""


class Engine(Protocol):
    name: str
    max_model_len: int

    def generate(
        self, prompt_embeds: torch.Tensor, options: SamplingOptions, request_id: str
    ) -> AsyncIterator[EngineOutput]:
        """Async-iterate cumulative outputs; the last one has ``finished=True``.

        Closing the iterator early (the caller went away) aborts the request.
        """
        ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""
        ...

    def stats(self) -> EngineStats: ...


def apply_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string; say whether one was found."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
