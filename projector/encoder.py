"""Backbone + projector: the whole AIM read path from (image, text) to fused tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from projector.backbone import Backbone, DemonstrationEncoding, QueryEmbedding
from projector.projector import Projector


@dataclass(frozen=True)
class FusedDemonstration:
    fused_tokens: torch.Tensor  # [text_tokens, hidden] in the engine's dtype, on CPU
    image_tokens: int
    raw_tokens: int
    image_embedding: torch.Tensor | None = None  # [hidden] float32: what selection ranks by


class AimEncoder:
    """Turns demonstrations into fused tokens and queries into input embeddings, in one dtype.

    Both come out in ``dtype`` (the engine's), on the CPU, contiguous: the prompt assembled from them
    is then byte-identical every time, which is what prefix caching keys on.
    """

    def __init__(self, backbone: Backbone, projector: Projector, *, dtype: torch.dtype) -> None:
        if projector.config.hidden_size != backbone.hidden_size:
            raise ValueError(
                f"projector hidden size {projector.config.hidden_size} != backbone {backbone.hidden_size}"
            )
        self.backbone = backbone
        self.projector = projector.to(backbone.device).eval()
        self.dtype = dtype

    @property
    def layer(self) -> int:
        return self.projector.config.layer

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device="cpu", dtype=self.dtype).contiguous()

    @torch.inference_mode()
    def encode_demonstration(self, image: Image.Image, text: str) -> FusedDemonstration:
        return self._fused(self.backbone.encode_demonstration(image, text, layer=self.layer))

    def _fused(self, encoding: DemonstrationEncoding) -> FusedDemonstration:
        proj_dtype = next(self.projector.parameters()).dtype
        text = encoding.text_embeds.to(proj_dtype) if self.projector.needs_text else None
        fused = self.projector(encoding.hidden_states.to(proj_dtype), text)
        return FusedDemonstration(
            fused_tokens=self._out(fused),
            image_tokens=encoding.image_tokens,
            raw_tokens=encoding.raw_tokens,
            image_embedding=encoding.image_embedding,
        )

    @torch.inference_mode()
    def encode_demonstrations(
        self, items: Sequence[tuple[Image.Image, str]], *, batch_size: int
    ) -> list[FusedDemonstration]:
        """``encode_demonstration`` of every item, ``batch_size`` items per backbone forward.

        Items are grouped by text length so that a forward pads little; results come back in input
        order. Equal to the one-at-a-time results up to float rounding (see
        ``Backbone.encode_demonstrations``).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
        results: dict[int, FusedDemonstration] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            encodings = self.backbone.encode_demonstrations([items[i] for i in chunk], layer=self.layer)
            for i, encoding in zip(chunk, encodings, strict=True):
                results[i] = self._fused(encoding)
        return [results[i] for i in range(len(items))]

    @torch.inference_mode()
    def embed_queries(
        self, items: Sequence[tuple[Image.Image, str, Sequence[tuple[str, str]]]], *, few_shot: bool = False
    ) -> list[QueryEmbedding]:
        """``embed_query`` of queries that all have an image, in one backbone forward."""
        return [self._query_out(q) for q in self.backbone.embed_queries(items, few_shot=few_shot)]

    @torch.inference_mode()
    def embed_query(
        self,
        image: Image.Image | None,
        text: str,
        history: Sequence[tuple[str, str]] = (),
        *,
        few_shot: bool = False,
    ) -> QueryEmbedding:
        """The query's embeddings; ``few_shot``: it will follow fused demonstrations."""
        return self._query_out(self.backbone.embed_query(image, text, history, few_shot=few_shot))

    def _query_out(self, q: QueryEmbedding) -> QueryEmbedding:
        return QueryEmbedding(
            prefix=self._out(q.prefix),
            body=self._out(q.body),
            image_tokens=q.image_tokens,
            image_embedding=q.image_embedding,
        )
