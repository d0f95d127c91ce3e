"""Generation logic: pick demonstrations, embed the query, assemble, run the engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch

from bank import DemonstrationBank, UnknownDemonstrationError, UnknownSetError
from bank.codec import DemonstrationRecord
from bank.selection import SimilarityIndex
from projector.backbone import QueryEmbedding
from projector.encoder import AimEncoder
from projector.prompt import PromptCost, assemble_prompt, prompt_cost
from server.demonstrations.serving import check_text, unknown_set
from server.engines.base import Engine, EngineError, EngineOutput, SamplingOptions
from server.errors import APIError, NotFoundError
from server.generate.protocol import GenerateChunk, GenerateRequest, GenerateResponse, Usage
from server.media import ImageDecoder, ImageField
from server.metrics import Metrics
from server.settings import Settings

GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    prompt_embeds: torch.Tensor
    cost: PromptCost
    demonstration_ids: list[str]
    options: SamplingOptions


class GenerateService:
    def __init__(
        self,
        encoder: AimEncoder,
        bank: DemonstrationBank,
        engine: Engine,
        settings: Settings,
        metrics: Metrics,
        images: ImageDecoder,
        similar: SimilarityIndex,
    ) -> None:
        self.encoder = encoder
        self.bank = bank
        self.images = images
        self.similar = similar
        self.engine = engine
        self.settings = settings
        self.metrics = metrics

    async def _demonstrations(
        self, request: GenerateRequest, query: QueryEmbedding
    ) -> list[DemonstrationRecord]:
        selection = request.demonstrations
        if selection is None:
            return []
        if selection.set is not None:
            try:
                ids = await self.bank.get_set(selection.set)
            except UnknownSetError:
                raise unknown_set(selection.set, "demonstrations.set") from None
            if selection.k is not None and selection.k > len(ids):
                raise APIError(
                    f"set {selection.set!r} has {len(ids)} demonstrations, fewer than k={selection.k}",
                    param="demonstrations.k",
                    code="k_exceeds_set",
                )
            k = len(ids) if selection.k is None else selection.k
            if selection.select == "similar":
                if query.image_embedding is None:
                    raise APIError(
                        "'similar' ranks the set by its images' likeness to the query image: send "
                        "query.image, or use 'first'",
                        param="demonstrations.select",
                        code="select_needs_image",
                    )
                ids = await self.similar.most_similar(self.bank, selection.set, query.image_embedding, k)
            else:
                ids = ids[:k]
            param = "demonstrations.k" if selection.k is not None else "demonstrations.set"
        else:
            ids = selection.ids or []
            param = "demonstrations.ids"
        if len(ids) > self.settings.max_demonstrations:
            raise APIError(
                f"{len(ids)} demonstrations, more than the limit of {self.settings.max_demonstrations}",
                param=param,
                code="too_many_demonstrations",
            )
        try:
            return await self.bank.get_many(ids)
        except UnknownDemonstrationError as exc:
            raise NotFoundError(
                f"demonstrations: unknown demonstration id(s): {', '.join(exc.ids)}",
                param="demonstrations.ids" if selection.ids is not None else "demonstrations.set",
                code="demonstration_not_found",
            ) from None

    async def prepare(self, request: GenerateRequest) -> PreparedRequest:
        s = self.settings
        check_text(request.query.text, param="query.text", max_chars=s.max_text_chars)
        if request.max_tokens > s.max_tokens_limit:
            raise APIError(
                f"{request.max_tokens} is more than the limit of {s.max_tokens_limit}",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        image = None
        if request.query.image is not None:
            (decoded,) = await self.images.decode([ImageField(request.query.image, "query.image")])
            image = decoded.image
        # The query first: per-query selection ranks the set by the query's image embedding.
        query = await asyncio.to_thread(self.encoder.embed_query, image, request.query.text)
        demonstrations = await self._demonstrations(request, query)
        prompt_embeds = assemble_prompt(query, [d.fused_tokens for d in demonstrations])
        cost = prompt_cost(query, demonstrations)
        limit = self.engine.max_model_len
        if cost.prompt_tokens >= limit:
            raise APIError(
                f"the prompt has {cost.prompt_tokens} tokens ({cost.fused_tokens} fused + "
                f"{cost.query_tokens} query), the model's context is {limit}: use fewer demonstrations "
                "or a shorter query",
                param="demonstrations" if demonstrations else "query.text",
                code="context_length_exceeded",
            )
        if cost.prompt_tokens + request.max_tokens > limit:
            raise APIError(
                f"prompt ({cost.prompt_tokens}) + max_tokens ({request.max_tokens}) exceeds the "
                f"model's context of {limit}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        return PreparedRequest(
            request_id=f"gen-{uuid.uuid4().hex}",
            prompt_embeds=prompt_embeds,
            cost=cost,
            demonstration_ids=[d.id for d in demonstrations],
            options=SamplingOptions(
                max_tokens=request.max_tokens,
                # vLLM samples greedily below 1e-5; the transformers engine would divide the logits by
                # the temperature and overflow. One rule for both engines.
                temperature=0.0 if request.temperature < GREEDY_BELOW else request.temperature,
                top_p=request.top_p,
                seed=request.seed,
                stop=stop,
            ),
        )

    def _usage(self, prepared: PreparedRequest, final: EngineOutput) -> Usage:
        c = prepared.cost
        return Usage(
            prompt_tokens=c.prompt_tokens,
            fused_tokens=c.fused_tokens,
            query_tokens=c.query_tokens,
            completion_tokens=len(final.token_ids),
            raw_multimodal_prompt_tokens=c.raw_multimodal_prompt_tokens,
            cached_tokens=final.num_cached_tokens,
        )

    def _record(self, prepared: PreparedRequest, usage: Usage, reason: str | None, started: float) -> None:
        m = self.metrics
        m.generate_requests.labels(finish_reason=reason or "none").inc()
        m.prompt_tokens.labels(kind="fused").inc(usage.fused_tokens)
        m.prompt_tokens.labels(kind="query").inc(usage.query_tokens)
        m.raw_multimodal_prompt_tokens.inc(usage.raw_multimodal_prompt_tokens)
        m.completion_tokens.inc(usage.completion_tokens)
        m.cached_tokens.inc(usage.cached_tokens)
        m.request_latency.observe(time.perf_counter() - started)

    async def generate(self, prepared: PreparedRequest) -> GenerateResponse:
        started = time.perf_counter()
        final = None
        async for output in self.engine.generate(
            prepared.prompt_embeds, prepared.options, prepared.request_id
        ):
            final = output
        if final is None or not final.finished:
            raise EngineError(f"engine {self.engine.name} ended request {prepared.request_id} unfinished")
        usage = self._usage(prepared, final)
        self._record(prepared, usage, final.finish_reason, started)
        return GenerateResponse(
            id=prepared.request_id,
            text=final.text,
            finish_reason=final.finish_reason,
            demonstrations=prepared.demonstration_ids,
            usage=usage,
        )

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[GenerateChunk]:
        """Chunks of new text; the last one carries finish_reason and usage.

        If the consumer stops (client gone), closing this generator closes the engine's, which
        aborts the request in the engine.
        """
        started = time.perf_counter()
        sent = 0
        outputs = self.engine.generate(prepared.prompt_embeds, prepared.options, prepared.request_id)
        try:
            async for output in outputs:
                delta, sent = output.text[sent:], len(output.text)
                if not output.finished:
                    if delta:
                        yield GenerateChunk(id=prepared.request_id, text=delta)
                    continue
                usage = self._usage(prepared, output)
                self._record(prepared, usage, output.finish_reason, started)
                yield GenerateChunk(
                    id=prepared.request_id,
                    text=delta,
                    finish_reason=output.finish_reason,
                    demonstrations=prepared.demonstration_ids,
                    usage=usage,
                )
        finally:
            await outputs.aclose()
