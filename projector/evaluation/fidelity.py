"""Fidelity: how closely the decoder reading fused tokens behaves as it does reading the raw prompt.

The teacher is raw multimodal ICL (``Backbone.raw_prompt_embeds``): its greedy answer is the
reference, and each other setting is *teacher-forced on that answer*, so the two next-token
distributions are compared position by position on the same tokens:

- ``kl``: mean over the answer's tokens of KL(raw ‖ setting), in nats, over the full vocabulary;
- ``first_token_agrees``: the two distributions' top-1 token at the answer's first position agree
  (tokens that generation forbids there, a newline or EOS, excluded on both sides, as greedy decoding
  sees them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from projector.backbone import Backbone


@torch.inference_mode()
def answer_logits(backbone: Backbone, prompt_embeds: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """``[T, vocab]`` float32 logits predicting each of the ``T`` answer tokens, teacher-forced."""
    model = backbone.model
    ids = answer_ids.to(model.device)
    prompt = prompt_embeds.to(model.device, model.dtype)
    embeds = torch.cat([prompt, model.get_input_embeddings()(ids[:-1]).to(model.dtype)], dim=0)
    logits = model(inputs_embeds=embeds[None], use_cache=False).logits[0]
    return logits[prompt.shape[0] - 1 :].float().cpu()


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> float:
    """Mean over positions of KL(teacher ‖ student), nats."""
    p = torch.log_softmax(teacher_logits.float(), dim=-1)
    q = torch.log_softmax(student_logits.float(), dim=-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def first_token_agrees(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, suppressed: Sequence[int] = ()
) -> bool:
    t, s = teacher_logits[0].float().clone(), student_logits[0].float().clone()
    if suppressed:
        idx = torch.tensor(list(suppressed), dtype=torch.long)
        t[idx] = s[idx] = float("-inf")
    return int(t.argmax()) == int(s.argmax())
