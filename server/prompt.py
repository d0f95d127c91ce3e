"""Prompt assembly: ``[query prefix (BOS)] + [fused tokens of each demonstration, in order] + [query]``.

The same demonstrations always produce the same leading bytes, so vLLM's prefix cache (which hashes
embedding bytes per block) hits when requests share leading demonstrations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bank.codec import DemonstrationRecord
from projector.backbone import QueryEmbedding


@dataclass(frozen=True)
class PromptCost:
    fused_tokens: int
    query_tokens: int
    raw_multimodal_prompt_tokens: int  # the same prompt with each demonstration as image + text tokens

    @property
    def prompt_tokens(self) -> int:
        return self.fused_tokens + self.query_tokens


def assemble_prompt(
    query: QueryEmbedding, demonstrations: Sequence[DemonstrationRecord]
) -> tuple[torch.Tensor, PromptCost]:
    parts = [query.prefix, *(d.fused_tokens for d in demonstrations), query.body]
    dtypes = {p.dtype for p in parts}
    if len(dtypes) != 1:  # would silently upcast and break byte-identical prefixes
        raise ValueError(f"prompt parts have mixed dtypes {dtypes}")
    embeds = torch.cat(parts, dim=0).contiguous()
    fused = sum(d.num_fused_tokens for d in demonstrations)
    cost = PromptCost(
        fused_tokens=fused,
        query_tokens=query.num_tokens,
        raw_multimodal_prompt_tokens=query.num_tokens + sum(d.raw_tokens for d in demonstrations),
    )
    return embeds, cost
