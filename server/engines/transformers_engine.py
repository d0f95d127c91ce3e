"""The reference engine: transformers ``generate(inputs_embeds=..., attention_mask=...)``.

Ground truth for the equivalence tests, and the engine when vLLM is not installed. Requests that
arrive within ``batch_wait_ms`` of each other (or while a batch runs) are grouped, left-padded and
decoded together; one worker runs the model so batches never compete for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch

from projector.backbone import Backbone
from server.engines.base import (
    EngineError,
    EngineLifecycle,
    EngineOutput,
    EngineStats,
    SamplingOptions,
    apply_stop,
)
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt_embeds: torch.Tensor
    options: SamplingOptions
    future: asyncio.Future[EngineOutput]
    cancelled: bool = False


class TransformersEngine(EngineLifecycle):
    name = "transformers"

    def __init__(self, settings: Settings, backbone: Backbone, *, max_model_len: int) -> None:
        super().__init__(max_model_len=max_model_len)
        self.model = backbone.model
        self.tokenizer = backbone.tokenizer
        self.max_num_seqs = settings.max_num_seqs
        self.batch_wait_s = settings.batch_wait_ms / 1000
        self.eos_token_ids = set(backbone.eos_token_ids)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else min(self.eos_token_ids)
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._inflight: dict[str, _Request] = {}
        self._worker: asyncio.Task | None = None
        self._stats = EngineStats()

    # -- lifecycle --------------------------------------------------------------------------------
    async def _start(self) -> None:
        self._worker = asyncio.create_task(self._loop(), name="transformers-engine")

    async def _shutdown(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for request in self._inflight.values():
            if not request.future.done():
                request.future.set_exception(EngineError("engine shut down"))

    def _failure(self) -> str | None:
        if self._worker is None or self._worker.done():
            return "its worker is not running"
        return None

    def stats(self) -> EngineStats:
        return self._stats

    # -- requests ---------------------------------------------------------------------------------
    async def generate(
        self, prompt_embeds: torch.Tensor, options: SamplingOptions, request_id: str
    ) -> AsyncIterator[EngineOutput]:
        self._require_running()
        if prompt_embeds.dim() != 2:
            raise EngineError(f"prompt_embeds must be [seq, hidden], got {tuple(prompt_embeds.shape)}")
        request = _Request(request_id, prompt_embeds, options, asyncio.get_running_loop().create_future())
        self._inflight[request_id] = request
        self._queue.put_nowait(request)
        try:
            # The reference engine produces the whole completion at once; a stream gets one chunk.
            yield await asyncio.shield(request.future)
        finally:
            if not request.future.done():
                request.cancelled = True
            self._inflight.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        request = self._inflight.get(request_id)
        if request is not None:
            request.cancelled = True

    # -- batching ---------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.batch_wait_s
            while len(batch) < self.max_num_seqs:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(deadline - loop.time(), 0)))
                except TimeoutError:
                    break
            for group in _group(r for r in batch if not r.cancelled):
                try:
                    outputs = await asyncio.to_thread(self._run, group)
                except Exception as exc:  # a model failure fails its batch, not the worker
                    log.exception("batch of %d failed", len(group))
                    outputs = [EngineError(f"generation failed: {exc}")] * len(group)
                for request, output in zip(group, outputs, strict=True):
                    if request.future.done():
                        continue
                    if isinstance(output, Exception):
                        request.future.set_exception(output)
                    else:
                        request.future.set_result(output)

    @torch.inference_mode()
    def _run(self, group: list[_Request]) -> list[EngineOutput]:
        self._stats.requests += len(group)
        self._stats.batches += 1
        self._stats.batch_sizes.append(len(group))
        self._stats.max_batch_size = max(self._stats.max_batch_size, len(group))
        device = self.model.device
        lengths = [r.prompt_embeds.shape[0] for r in group]
        longest, hidden = max(lengths), group[0].prompt_embeds.shape[1]
        embeds = torch.zeros(len(group), longest, hidden, dtype=self.model.dtype, device=device)
        mask = torch.zeros(len(group), longest, dtype=torch.long, device=device)
        for i, r in enumerate(group):  # left padding: every prompt ends where generation starts
            embeds[i, longest - lengths[i] :] = r.prompt_embeds.to(device, self.model.dtype)
            mask[i, longest - lengths[i] :] = 1
        options = group[0].options
        kwargs: dict = {
            "inputs_embeds": embeds,
            "attention_mask": mask,
            "max_new_tokens": max(r.options.max_tokens for r in group),
            "pad_token_id": self.pad_token_id,
            # None turns off EOS stopping (the group shares ignore_eos, see _group).
            "eos_token_id": None if options.ignore_eos else sorted(self.eos_token_ids),
        }
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p, top_k=0)
            if options.seed is not None:
                torch.manual_seed(options.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        sequences = self.model.generate(**kwargs)
        return [self._finish(row.tolist(), r.options) for row, r in zip(sequences, group, strict=True)]

    def _finish(self, tokens: list[int], options: SamplingOptions) -> EngineOutput:
        reason = "length"
        for i, token in enumerate(tokens[: options.max_tokens]):
            if token in self.eos_token_ids and not options.ignore_eos:
                tokens, reason = tokens[:i], "stop"
                break
        else:
            tokens = tokens[: options.max_tokens]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, stopped = apply_stop(text, options.stop)
        return EngineOutput(
            text=text, token_ids=tokens, finished=True, finish_reason="stop" if stopped else reason
        )


def _group(requests) -> list[list[_Request]]:
    """Requests that can share one ``generate`` call: all greedy ones together; sampled ones with the
    same temperature and top_p together; a seeded sampled request alone (its seed must be its own).
    Requests that ignore EOS never share a call with those that stop at it."""
    groups: dict[tuple, list[_Request]] = {}
    for r in requests:
        o = r.options
        if o.temperature == 0:
            key: tuple = ("greedy",)
        elif o.seed is None:
            key = ("sample", o.temperature, o.top_p)
        else:
            key = ("seeded", id(r))
        groups.setdefault((o.ignore_eos, *key), []).append(r)
    return list(groups.values())
