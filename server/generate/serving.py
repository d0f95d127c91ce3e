"""Generation, the one path every protocol takes: pick demonstrations, embed the query, assemble, run.

``/generate`` and ``/v1/chat/completions`` each map their wire request to an ``InferenceRequest``
(protocol-independent: query text, optional image, earlier turns, demonstration selection, sampling)
and their answers from a ``Completion`` / ``CompletionDelta``; everything in between happens here once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from bank import DemonstrationBank, UnknownDemonstrationError, UnknownSetError
from bank.codec import DemonstrationRecord
from bank.selection import SimilarityIndex
from projector.backbone import QueryEmbedding
from projector.encoder import AimEncoder
from projector.prompt import PromptCost, assemble_prompt, prompt_cost
from projector.templates import ConversationError
from server.demonstrations.serving import check_text, unknown_set
from server.engines.base import Engine, EngineError, EngineOutput, SamplingOptions
from server.errors import APIError, NotFoundError
from server.generate.protocol import GenerateChunk, GenerateRequest, GenerateResponse, Usage
from server.generate.query_batcher import QueryBatcher
from server.media import ImageDecoder, ImageField
from server.metrics import Metrics
from server.settings import Settings
from server.wire import DemonstrationSelection

GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Params:
    """The caller's names for the parts of a request, so that every error names a field it sent."""

    text: str = "query.text"
    prompt: str = "query.text"  # what a too-long prompt is blamed on when there are no demonstrations
    max_tokens: str = "max_tokens"


@dataclass(frozen=True)
class Turn:
    """An earlier turn of a conversation, before the query."""

    role: str  # system | user | assistant
    text: str
    param: str  # where it came from: "messages[0].content"


@dataclass(frozen=True)
class InferenceRequest:
    """What a protocol asks of generation once its own wire checks have passed."""

    text: str
    image: ImageField | None = None
    history: tuple[Turn, ...] = ()
    demonstrations: DemonstrationSelection | None = None
    max_tokens: int | None = 64  # None: as many as the context holds, up to AIM_MAX_TOKENS_LIMIT
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    params: Params = field(default_factory=Params)


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    prompt_embeds: torch.Tensor
    cost: PromptCost
    demonstration_ids: list[str]
    options: SamplingOptions


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int  # fused_tokens + query_tokens: what the engine read
    fused_tokens: int
    query_tokens: int
    completion_tokens: int
    raw_multimodal_prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Completion:
    request_id: str
    text: str
    finish_reason: str | None  # "stop" | "length" | "abort"
    demonstration_ids: list[str]
    usage: TokenUsage
    engine_seconds: float = 0.0  # inside the engine: the rest of a request's time is the server's


@dataclass(frozen=True)
class CompletionDelta:
    """New text since the previous delta; the last one (``finished``) carries the reason and usage."""

    text: str
    finished: bool = False
    finish_reason: str | None = None
    usage: TokenUsage | None = None


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
        queries: QueryBatcher,
    ) -> None:
        self.encoder = encoder
        self.queries = queries
        self.bank = bank
        self.images = images
        self.similar = similar
        self.engine = engine
        self.settings = settings
        self.metrics = metrics

    async def _demonstrations(
        self, selection: DemonstrationSelection | None, query: QueryEmbedding
    ) -> list[DemonstrationRecord]:
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
                        "'similar' ranks the set by its images' likeness to the query's image: send the "
                        "query with an image, or use 'first'",
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

    def _check_texts(self, request: InferenceRequest) -> None:
        max_chars = self.settings.max_text_chars
        check_text(request.text, param=request.params.text, max_chars=max_chars)
        for turn in request.history:
            if len(turn.text) > max_chars:
                raise APIError(
                    f"longer than the limit of {max_chars} characters", param=turn.param, code="text_too_long"
                )
        # The processor would expand the placeholder into image tokens that no image fills.
        placeholder = self.encoder.backbone.image_token
        for text, param in [
            (request.text, request.params.text),
            *((t.text, t.param) for t in request.history),
        ]:
            if placeholder in text:
                raise APIError(
                    f"must not contain the image placeholder {placeholder!r}: send the image as an image",
                    param=param,
                )

    async def _embed_query(
        self,
        image: Image.Image | None,
        request: InferenceRequest,
        history: list[tuple[str, str]],
        few_shot: bool,
    ) -> QueryEmbedding:
        try:
            return await self.queries.embed(image, request.text, history, few_shot=few_shot)
        except ConversationError as exc:
            raise APIError(str(exc), param=request.params.prompt) from None

    async def prepare(self, request: InferenceRequest, *, id_prefix: str = "gen") -> PreparedRequest:
        """Everything up to the engine; every 4xx of a request is raised here."""
        s = self.settings
        self._check_texts(request)
        if request.max_tokens is not None and request.max_tokens > s.max_tokens_limit:
            raise APIError(
                f"{request.max_tokens} is more than the limit of {s.max_tokens_limit}",
                param=request.params.max_tokens,
                code="max_tokens_too_large",
            )
        image = None
        if request.image is not None:
            (decoded,) = await self.images.decode([request.image])
            image = decoded.image
        history = [(t.role, t.text) for t in request.history]
        # The query first: per-query selection ranks the set by the query's image embedding. It is
        # wrapped as a few-shot query when demonstrations were asked for (the model may wrap those
        # differently: Templates.for_query), and again as zero-shot if none came back (an empty set).
        few_shot = request.demonstrations is not None and request.demonstrations.asks_for_any
        query = await self._embed_query(image, request, history, few_shot)
        demonstrations = await self._demonstrations(request.demonstrations, query)
        if few_shot and not demonstrations:
            query = await self._embed_query(image, request, history, False)
        prompt_embeds = assemble_prompt(query, [d.fused_tokens for d in demonstrations])
        cost = prompt_cost(query, demonstrations)
        limit = self.engine.max_model_len
        if cost.prompt_tokens >= limit:
            raise APIError(
                f"the prompt has {cost.prompt_tokens} tokens ({cost.fused_tokens} fused + "
                f"{cost.query_tokens} query), the model's context is {limit}: use fewer demonstrations "
                "or a shorter query",
                param="demonstrations" if demonstrations else request.params.prompt,
                code="context_length_exceeded",
            )
        max_tokens = request.max_tokens or min(s.max_tokens_limit, limit - cost.prompt_tokens)
        if cost.prompt_tokens + max_tokens > limit:
            raise APIError(
                f"prompt ({cost.prompt_tokens}) + {request.params.max_tokens} ({max_tokens}) "
                f"exceeds the model's context of {limit}",
                param=request.params.max_tokens,
                code="context_length_exceeded",
            )
        return PreparedRequest(
            request_id=f"{id_prefix}-{uuid.uuid4().hex}",
            prompt_embeds=prompt_embeds,
            cost=cost,
            demonstration_ids=[d.id for d in demonstrations],
            options=SamplingOptions(
                max_tokens=max_tokens,
                # vLLM samples greedily below 1e-5; the transformers engine would divide the logits by
                # the temperature and overflow. One rule for both engines.
                temperature=0.0 if request.temperature < GREEDY_BELOW else request.temperature,
                top_p=request.top_p,
                seed=request.seed,
                stop=request.stop,
            ),
        )

    def _usage(self, prepared: PreparedRequest, final: EngineOutput) -> TokenUsage:
        c = prepared.cost
        return TokenUsage(
            prompt_tokens=c.prompt_tokens,
            fused_tokens=c.fused_tokens,
            query_tokens=c.query_tokens,
            completion_tokens=len(final.token_ids),
            raw_multimodal_prompt_tokens=c.raw_multimodal_prompt_tokens,
            cached_tokens=final.num_cached_tokens,
        )

    def _record(self, usage: TokenUsage, reason: str | None, started: float) -> None:
        m = self.metrics
        m.generate_requests.labels(finish_reason=reason or "none").inc()
        m.prompt_tokens.labels(kind="fused").inc(usage.fused_tokens)
        m.prompt_tokens.labels(kind="query").inc(usage.query_tokens)
        m.raw_multimodal_prompt_tokens.inc(usage.raw_multimodal_prompt_tokens)
        m.completion_tokens.inc(usage.completion_tokens)
        m.cached_tokens.inc(usage.cached_tokens)
        m.request_latency.observe(time.perf_counter() - started)

    async def generate(self, prepared: PreparedRequest) -> Completion:
        started = time.perf_counter()
        final = None
        async for output in self.engine.generate(
            prepared.prompt_embeds, prepared.options, prepared.request_id
        ):
            final = output
        if final is None or not final.finished:
            raise EngineError(f"engine {self.engine.name} ended request {prepared.request_id} unfinished")
        usage = self._usage(prepared, final)
        self._record(usage, final.finish_reason, started)
        return Completion(
            request_id=prepared.request_id,
            text=final.text,
            finish_reason=final.finish_reason,
            demonstration_ids=prepared.demonstration_ids,
            usage=usage,
            engine_seconds=time.perf_counter() - started,
        )

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[CompletionDelta]:
        """Deltas of new text; the last one is ``finished`` and carries finish_reason and usage.

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
                        yield CompletionDelta(delta)
                    continue
                usage = self._usage(prepared, output)
                self._record(usage, output.finish_reason, started)
                yield CompletionDelta(delta, finished=True, finish_reason=output.finish_reason, usage=usage)
        finally:
            await outputs.aclose()


# -- /generate's wire mapping ------------------------------------------------------------------------


def generate_request(body: GenerateRequest) -> InferenceRequest:
    return InferenceRequest(
        text=body.query.text,
        image=ImageField(body.query.image, "query.image") if body.query.image is not None else None,
        demonstrations=body.demonstrations,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
    )


def generate_usage(usage: TokenUsage) -> Usage:
    return Usage(**vars(usage))


def generate_response(completion: Completion) -> GenerateResponse:
    return GenerateResponse(
        id=completion.request_id,
        text=completion.text,
        finish_reason=completion.finish_reason,
        demonstrations=completion.demonstration_ids,
        usage=generate_usage(completion.usage),
    )


async def generate_chunks(
    service: GenerateService, prepared: PreparedRequest
) -> AsyncIterator[GenerateChunk]:
    deltas = service.stream(prepared)
    try:
        async for delta in deltas:
            if not delta.finished:
                yield GenerateChunk(id=prepared.request_id, text=delta.text)
                continue
            yield GenerateChunk(
                id=prepared.request_id,
                text=delta.text,
                finish_reason=delta.finish_reason,
                demonstrations=prepared.demonstration_ids,
                usage=generate_usage(delta.usage) if delta.usage else None,
            )
    finally:
        await deltas.aclose()  # a client gone closes this generator: the engine aborts the request
