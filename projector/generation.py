"""Greedy generation of one answer line from prompt embeddings, the decoding ``aim eval`` scores.

Training uses it too: sequence-level distillation (``aim train --distil-on teacher``) teaches the
student along the raw-ICL teacher's own greedy answer, the very answer evaluation compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from projector.backbone import Backbone


@dataclass(frozen=True)
class Generation:
    text: str
    answer_ids: torch.Tensor  # the generated tokens, the stop token included when one was generated
    logits: torch.Tensor  # [T, vocab] float32: the distributions each answer token was chosen from


def newline_token_ids(tokenizer) -> list[int]:
    """Every token whose text contains a newline: generation stops at the end of the answer line."""
    vocab = tokenizer.get_vocab()
    ids = []
    for token, idx in vocab.items():
        text = tokenizer.convert_tokens_to_string([token])
        if "\n" in text:
            ids.append(idx)
    return sorted(ids)


class AnswerGenerator:
    """Greedy decoding that stops at the end of the first line (or EOS) and never answers empty."""

    def __init__(self, backbone: Backbone, *, max_new_tokens: int = 6) -> None:
        self.backbone = backbone
        self.max_new_tokens = max_new_tokens
        self.stop_ids = sorted(set(backbone.eos_token_ids) | set(newline_token_ids(backbone.tokenizer)))
        self.pad_id = backbone.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = backbone.eos_token_ids[0]

    @torch.inference_mode()
    def generate(self, embeds: torch.Tensor, *, max_new_tokens: int | None = None) -> Generation:
        model = self.backbone.model
        embeds = embeds.to(model.device, model.dtype)[None]
        out = model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=model.device),
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=self.stop_ids,
            # An answer must start with a word: a newline or EOS first would end it empty.
            begin_suppress_tokens=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        ids = out.sequences[0, -len(out.logits) :].cpu()
        logits = torch.stack([step[0] for step in out.logits]).float().cpu()
        return Generation(self.backbone.tokenizer.decode(ids, skip_special_tokens=True), ids, logits)
