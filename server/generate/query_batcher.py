"""Micro-batching of query embedding across concurrent requests.

Each request's query image would otherwise go through the vision tower alone, in its own thread: at
high concurrency on an accelerator those small forwards, not the engine, bound the server. Requests
that arrive within ``max_wait_ms`` of the first waiting one (up to ``max_batch``) share one padded
forward (``AimEncoder.embed_queries``), one per query template (few-shot or not) in the batch.
Text-only queries need no vision tower and skip the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from projector.backbone import QueryEmbedding
from projector.encoder import AimEncoder

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Waiting:
    image: Image.Image
    text: str
    history: Sequence[tuple[str, str]]
    few_shot: bool
    result: asyncio.Future[QueryEmbedding]


class QueryBatcher:
    """Embeds queries, batching those with an image that arrive close together.

    Built and closed by the app's lifespan (``async with``); ``max_batch`` 1 embeds every query alone.
    """

    def __init__(self, encoder: AimEncoder, *, max_batch: int, max_wait_ms: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of the last forwards (bounded): what tests and benches read

    async def __aenter__(self) -> QueryBatcher:
        if self.max_batch > 1:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="query-batcher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        queue, self._queue = self._queue, None
        while queue is not None and not queue.empty():  # nobody will answer them now
            waiting = queue.get_nowait()
            if not waiting.result.done():
                waiting.result.set_exception(RuntimeError("the server is shutting down"))

    async def embed(
        self,
        image: Image.Image | None,
        text: str,
        history: Sequence[tuple[str, str]] = (),
        *,
        few_shot: bool = False,
    ) -> QueryEmbedding:
        """What ``AimEncoder.embed_query`` returns for this query; its errors are raised here too."""
        if image is None or self._queue is None:
            return await asyncio.to_thread(
                _no_stop_iteration, self.encoder.embed_query, image, text, history, few_shot=few_shot
            )
        result: asyncio.Future[QueryEmbedding] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Waiting(image, text, history, few_shot, result))
        return await result

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = asyncio.get_running_loop().time() + self.max_wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    # Whatever is queued already joins even when the window is over.
                    batch.append(
                        queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            live = [w for w in batch if not w.result.done()]  # a caller gone (cancelled) needs nothing
            try:
                if live:
                    await self._embed(live)
            finally:  # cancelled mid-batch (shutdown): no caller is left waiting forever
                for w in live:
                    if not w.result.done():
                        w.result.set_exception(RuntimeError("the server is shutting down"))

    async def _embed(self, batch: list[_Waiting]) -> None:
        # One template per forward: few-shot and zero-shot queries may be wrapped differently.
        for few_shot in (False, True):
            group = [w for w in batch if w.few_shot is few_shot]
            if group:
                await self._embed_group(group, few_shot)

    async def _embed_group(self, batch: list[_Waiting], few_shot: bool) -> None:
        self._note(len(batch))
        if len(batch) == 1:
            await self._one(batch[0])
            return
        try:
            queries = await asyncio.to_thread(
                _no_stop_iteration,
                self.encoder.embed_queries,
                [(w.image, w.text, w.history) for w in batch],
                few_shot=few_shot,
            )
        except Exception:  # noqa: BLE001 - one bad query must fail alone, not its batch
            log.debug("a batch of %d queries failed; embedding them one at a time", len(batch))
            for w in batch:
                await self._one(w)
            return
        for w, query in zip(batch, queries, strict=True):
            if not w.result.done():
                w.result.set_result(query)

    async def _one(self, w: _Waiting) -> None:
        try:
            query = await asyncio.to_thread(
                _no_stop_iteration, self.encoder.embed_query, w.image, w.text, w.history, few_shot=w.few_shot
            )
        except Exception as exc:  # noqa: BLE001 - handed to the caller that sent it
            if not w.result.done():
                w.result.set_exception(exc)
        else:
            if not w.result.done():
                w.result.set_result(query)

    def _note(self, size: int) -> None:
        self.batches.append(size)
        del self.batches[:-1000]


def _no_stop_iteration(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, with a StopIteration turned into an error a future can carry.

    transformers raises StopIteration from a model's forward when a prompt's image placeholders
    outnumber its images; asyncio cannot set it on a future, and the awaiting coroutine would wait
    forever (measured: the batcher stopped answering every later query).
    """
    try:
        return fn(*args, **kwargs)
    except StopIteration as exc:
        raise RuntimeError(f"the backbone failed on this query: StopIteration {exc}") from None
