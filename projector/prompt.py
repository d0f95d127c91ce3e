"""The AIM prompt layout, the one definition of it: ``[query prefix] + fused tokens + [query body]``.

The query prefix is what opens every prompt (BOS); the fused tokens of the chosen demonstrations follow
in order; the query body (its image spliced in) comes last. The server, training, evaluation and the
benchmarks all build prompts here, so a number measured on any of them is a number about the server.
The same demonstrations always give the same leading bytes, so vLLM's prefix cache (which hashes
embedding bytes per block) hits when requests share leading demonstrations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from projector.backbone import QueryEmbedding


class CostedDemonstration(Protocol):
    """Anything that knows a demonstration's two prices: as fused tokens and as a raw prompt segment."""

    @property
    def fused_tokens(self) -> torch.Tensor: ...

    @property
    def raw_tokens(self) -> int: ...


@dataclass(frozen=True)
class PromptCost:
    fused_tokens: int
    query_tokens: int
    raw_multimodal_prompt_tokens: int  # the same prompt with each demonstration as image + text tokens

    @property
    def prompt_tokens(self) -> int:
        return self.fused_tokens + self.query_tokens


def assemble_prompt(query: QueryEmbedding, fused_tokens: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[seq, hidden]`` prompt embeddings; gradients flow through the fused tokens when they carry any."""
    parts = [query.prefix, *fused_tokens, query.body]
    dtypes = {p.dtype for p in parts}
    if len(dtypes) != 1:  # torch.cat would silently upcast and break byte-identical prefixes
        raise ValueError(f"prompt parts have mixed dtypes {dtypes}")
    return torch.cat(parts, dim=0).contiguous()


def prompt_cost(query: QueryEmbedding, demonstrations: Sequence[CostedDemonstration]) -> PromptCost:
    return PromptCost(
        fused_tokens=sum(int(d.fused_tokens.shape[0]) for d in demonstrations),
        query_tokens=query.num_tokens,
        raw_multimodal_prompt_tokens=query.num_tokens + sum(d.raw_tokens for d in demonstrations),
    )
