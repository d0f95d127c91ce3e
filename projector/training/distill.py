"""Distillation from raw multimodal ICL: the teacher's next-token distributions over an episode's answer.

The teacher is the frozen backbone reading the ordinary interleaved prompt (every demonstration with
its own image, then the query: ``Backbone.raw_prompt_embeds``, the prompt ``aim eval``'s raw-ICL
setting uses), teacher-forced on the episode's target: its reference answer, or with
``TeacherAnswers`` the teacher's own greedy answer (sequence-level distillation). The student is the
same backbone reading the AIM prompt (fused tokens + the same query). The teacher does not change
during training, so its distributions are computed once per episode and cached (memory, and
``cache_dir`` when given).

Only the teacher's ``top_k`` log-probabilities per position are kept (``top_k = 0`` keeps the whole
vocabulary). The KL is then taken between the two distributions coarsened to those ``top_k`` tokens
plus one "everything else" bucket: exact for the mass the teacher puts on its top tokens, a lower
bound of the full KL overall (coarsening never increases a KL), and equal to it when ``top_k`` covers
the vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from projector.backbone import Backbone
from projector.generation import AnswerGenerator
from projector.prompt import assemble_prompt
from projector.training.episodes import Episode, first_line
from projector.training.features import FeatureCache


def _scope(backbone: Backbone) -> str:
    """The teacher never reads the projector's layer: its caches are keyed by the backbone and templates."""
    return hashlib.sha256(json.dumps(backbone.identity(), sort_keys=True).encode()).hexdigest()[:16]


def raw_prompt(backbone: Backbone, ep: Episode) -> torch.Tensor:
    """The teacher's prompt [L, d]: every demonstration with its own image, then the query, laid out by
    ``assemble_prompt`` as ``aim eval``'s raw-ICL setting lays it out."""
    raw = backbone.raw_prompt_embeds([(d.load(), d.text) for d in ep.demonstrations], ep.query.load(),
                                     ep.query.text)  # fmt: skip
    return assemble_prompt(raw, []).to(backbone.device, backbone.dtype)


class TeacherAnswers:
    """Each episode with its answer replaced by the raw-ICL teacher's greedy answer (its first line).

    Sequence-level distillation (Kim & Rush, 2016): the student then learns the teacher's
    distributions along the answer the teacher itself gives, which is what agreement with raw ICL
    measures, instead of along a reference the teacher may not give (on binding, raw ICL on aim-mini
    writes a shown label right a third of the time and mangles some). Answers are cached per episode
    in ``answers.json`` (memory only without ``cache_dir``).
    """

    SLACK = 4  # tokens the teacher may write beyond the reference's length before it is cut off

    def __init__(self, backbone: Backbone, *, cache_dir: Path | None = None) -> None:
        self.backbone = backbone
        self.generator = AnswerGenerator(backbone)
        self.path = Path(cache_dir) / _scope(backbone) / "teacher" / "answers.json" if cache_dir else None
        self._answers: dict[str, str] = (
            json.loads(self.path.read_text()) if self.path is not None and self.path.exists() else {}
        )

    @staticmethod
    def key(ep: Episode) -> str:
        h = hashlib.sha256()
        for part in [*(d.key for d in ep.demonstrations), ep.query.key]:
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:32]

    @torch.no_grad()
    def answer(self, ep: Episode) -> str:
        key = self.key(ep)
        if key not in self._answers:
            budget = (
                len(self.backbone.tokenizer(ep.target, add_special_tokens=False)["input_ids"]) + self.SLACK
            )
            text = self.generator.generate(raw_prompt(self.backbone, ep), max_new_tokens=budget).text
            self._answers[key] = first_line(text)
        return self._answers[key]

    def relabel(self, episodes: list[Episode], *, progress: bool = True) -> list[Episode]:
        """The episodes with the teacher's answers (an episode it answers empty keeps its own)."""
        from tqdm import tqdm

        out = [replace(ep, answer=self.answer(ep) or ep.answer)
               for ep in tqdm(episodes, desc="raw-ICL answers", disable=not progress, mininterval=2.0)]  # fmt: skip
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._answers, sort_keys=True))
            tmp.replace(self.path)
        return out


class TeacherCache:
    """Raw-ICL teacher distributions over each episode's target tokens: ``(ids [T, K], log p [T, K])``."""

    def __init__(self, features: FeatureCache, *, top_k: int = 64, cache_dir: Path | None = None) -> None:
        self.features = features
        self.backbone: Backbone = features.backbone
        self.top_k = top_k
        self.dir = Path(cache_dir) / _scope(self.backbone) / "teacher" if cache_dir is not None else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def key(self, ep: Episode) -> str:
        h = hashlib.sha256()
        for part in [*(d.key for d in ep.demonstrations), ep.query.key, ep.target, str(self.top_k)]:
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:32]

    def get(self, ep: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        key = self.key(ep)
        if key not in self._memory:
            path = self.dir / f"{key}.safetensors" if self.dir is not None else None
            if path is not None and path.exists():
                t = load_file(str(path))
                self._memory[key] = (t["ids"], t["logp"])
            else:
                self._memory[key] = self._compute(ep)
                if path is not None:
                    save_file({"ids": self._memory[key][0], "logp": self._memory[key][1]}, str(path))
        return self._memory[key]

    @torch.no_grad()
    def _compute(self, ep: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = self.backbone
        ids, target = self.features.target(ep.target)
        prompt = raw_prompt(backbone, ep)
        embeds = torch.cat([prompt, target.to(backbone.device, backbone.dtype)])
        logits = backbone.model(inputs_embeds=embeds[None], use_cache=False).logits[0].float()
        start = prompt.shape[0] - 1
        logp = torch.log_softmax(logits[start : start + ids.numel()], dim=-1)
        if self.top_k and self.top_k < logp.shape[-1]:
            top, idx = logp.topk(self.top_k, dim=-1)
        else:
            idx = torch.arange(logp.shape[-1]).expand(logp.shape[0], -1)
            top = logp
        return idx.to(torch.int64).cpu().contiguous(), top.cpu().contiguous()

    def warm(self, episodes: list[Episode], *, progress: bool = True) -> None:
        from tqdm import tqdm

        for ep in tqdm(episodes, desc="raw-ICL teacher", disable=not progress, mininterval=2.0):
            self.get(ep)


def topk_kl(
    student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logp: torch.Tensor
) -> torch.Tensor:
    """Per-position KL(teacher ‖ student) over the teacher's top tokens plus one bucket for the rest.

    ``student_logits`` [T, V]; ``teacher_ids`` / ``teacher_logp`` [T, K]. Returns [T] (nats).
    """
    s_logp = torch.log_softmax(student_logits.float(), dim=-1)
    s_top = s_logp.gather(-1, teacher_ids)
    p_top = teacher_logp.exp()
    kl = (p_top * (teacher_logp - s_top)).sum(-1)
    p_rest = (1.0 - p_top.sum(-1)).clamp_min(0.0)
    if teacher_ids.shape[-1] < student_logits.shape[-1]:
        s_rest = torch.log1p(-s_top.exp().sum(-1).clamp(max=1 - 1e-6))
        kl = kl + torch.where(p_rest > 1e-8, p_rest * (p_rest.clamp_min(1e-12).log() - s_rest), 0.0)
    return kl
