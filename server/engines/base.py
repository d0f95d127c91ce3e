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
    # Keep generating past EOS until max_tokens (benchmarks: every prompt yields the same length).
    ignore_eos: bool = False


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
    """Built cheaply (``Engine(settings, backbone, max_model_len=...)``), then ``await start()``;
    ``await shutdown()`` ends it for good. Requests before start or after shutdown raise
    ``EngineError``."""

    name: str
    max_model_len: int

    async def start(self) -> None:
        """Load what the engine needs and begin serving."""
        ...

    async def shutdown(self) -> None:
        """Stop serving; in-flight requests fail with ``EngineError``. Safe to call twice."""
        ...

    @property
    def errored(self) -> bool:
        """True once the engine can no longer serve: it shut down or failed."""
        ...

    def generate(
        self, prompt_embeds: torch.Tensor, options: SamplingOptions, request_id: str
    ) -> AsyncIterator[EngineOutput]:
        """Async-iterate cumulative outputs; the last one has ``finished=True``.

        Closing the iterator early (the caller went away) aborts the request.
        """
        ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None:
        """Raise ``EngineError`` if the engine cannot serve (not started, shut down, or failed)."""
        ...

    def stats(self) -> EngineStats: ...


class EngineLifecycle:
    """The lifecycle both engines share: created, then running after ``start()``, then shut down.

    Subclasses implement ``_start``, ``_shutdown`` (which must cope with a start that never ran or
    failed half-way), ``_failure`` (why a running engine cannot serve,
    or None) and call ``_require_running()`` before taking a request.
    """

    name: str

    def __init__(self, *, max_model_len: int) -> None:
        self.max_model_len = max_model_len
        self._started = False
        self._stopped = False

    async def start(self) -> None:
        if self._started or self._stopped:
            raise EngineError(f"the {self.name} engine was already started; build a new one")
        await self._start()
        self._started = True

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._shutdown()  # also after a failed or missing start: it frees what was built

    @property
    def errored(self) -> bool:
        return self._stopped or (self._started and self._failure() is not None)

    def _require_running(self) -> None:
        if self._stopped:
            raise EngineError(f"the {self.name} engine has shut down")
        if not self._started:
            raise EngineError(f"the {self.name} engine has not been started")

    async def check_health(self) -> None:
        self._require_running()
        if (failure := self._failure()) is not None:
            raise EngineError(f"the {self.name} engine is unhealthy: {failure}")

    async def _start(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    def _failure(self) -> str | None:
        raise NotImplementedError


def apply_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string; say whether one was found."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
