"""Frozen-backbone features per training item, computed once and cached in memory and on disk.

What the backbone computes does not depend on the projector, so demonstration hidden states, query
embeddings and target embeddings are computed once per distinct item; a training step is then one
decoder forward/backward.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from projector.backbone import Backbone
from projector.projector import Projector
from projector.training.episodes import Episode, Pair


@dataclass(frozen=True)
class QueryFeatures:
    prefix: torch.Tensor
    body: torch.Tensor


class FeatureCache:
    """Frozen-backbone features per item, keyed by the item's content and the backbone's identity.

    Demonstrations: hidden states at text positions ([n, d]); queries: prefix/body input embeddings;
    targets: token ids and their input embeddings. All float32 on CPU; moved to the device per step.
    """

    def __init__(self, backbone: Backbone, *, layer: int = -1, cache_dir: Path | None = None) -> None:
        self.backbone = backbone
        self.layer = layer
        ident = json.dumps({**backbone.identity(), "layer": layer}, sort_keys=True)
        self.scope = hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.dir = Path(cache_dir) / self.scope if cache_dir is not None else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._demo: dict[str, torch.Tensor] = {}
        self._query: dict[str, QueryFeatures] = {}
        self._target: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._text: dict[str, torch.Tensor] = {}  # demonstration_text, by pair key

    def _disk(self, kind: str, key: str) -> Path | None:
        return self.dir / f"{kind}-{key}.safetensors" if self.dir is not None else None

    def demonstration(self, pair: Pair) -> torch.Tensor:
        key = pair.key
        if key not in self._demo:
            path = self._disk("d", key)
            if path is not None and path.exists():
                self._demo[key] = load_file(str(path))["h"]
            else:
                with torch.no_grad():  # not inference mode: the projector's input must be usable in backward
                    enc = self.backbone.encode_demonstration(pair.load(), pair.text, layer=self.layer)
                self._store(pair, enc.hidden_states)
        return self._demo[key]

    def _store(self, pair: Pair, hidden_states: torch.Tensor) -> None:
        h = hidden_states.float().cpu().contiguous()
        path = self._disk("d", pair.key)
        if path is not None:
            save_file({"h": h}, str(path))
        self._demo[pair.key] = h

    def demonstrations(self, pairs: list[Pair], *, batch_size: int = 8) -> list[torch.Tensor]:
        """``demonstration`` of every pair, the missing ones computed ``batch_size`` at a time in one
        padded forward each (equal to one at a time up to float rounding: ``Backbone.encode_demonstrations``)."""
        missing = list({p.key: p for p in pairs if p.key not in self._demo and not self._on_disk(p)}.values())
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            with torch.no_grad():
                encs = self.backbone.encode_demonstrations(
                    [(p.load(), p.text) for p in chunk], layer=self.layer
                )
            for pair, enc in zip(chunk, encs, strict=True):
                self._store(pair, enc.hidden_states)
        return [self.demonstration(p) for p in pairs]

    def _on_disk(self, pair: Pair) -> bool:
        path = self._disk("d", pair.key)
        return path is not None and path.exists()

    def demonstration_text(self, pair: Pair) -> torch.Tensor:
        """The input embeddings of the demonstration's text tokens, one row per ``demonstration`` row
        (what ``DemonstrationEncoding.text_embeds`` holds: a lookup, no forward)."""
        if pair.key not in self._text:
            rows = self._embed(
                torch.tensor(self.backbone.demonstration_text_ids(pair.text), dtype=torch.long)
            )
            n_hidden = self.demonstration(pair).shape[0]
            if rows.shape[0] != n_hidden:
                raise ValueError(f"{pair.text!r}: {rows.shape[0]} text tokens, {n_hidden} hidden states")
            self._text[pair.key] = rows  # read again at every training step by a residual projector
        return self._text[pair.key]

    def fused(self, pair: Pair, projector: Projector, device: torch.device) -> torch.Tensor:
        """The projector's fused tokens for a demonstration, from the cached features."""
        text = self.demonstration_text(pair).to(device) if projector.needs_text else None
        return projector(self.demonstration(pair).to(device), text)

    def query(self, pair: Pair) -> QueryFeatures:
        key = pair.key
        if key not in self._query:
            path = self._disk("q", key)
            if path is not None and path.exists():
                t = load_file(str(path))
                self._query[key] = QueryFeatures(t["prefix"], t["body"])
            else:
                with torch.no_grad():  # a training query always follows demonstrations
                    q = self.backbone.embed_query(pair.load(), pair.text, few_shot=True)
                feats = QueryFeatures(q.prefix.float().cpu().contiguous(), q.body.float().cpu().contiguous())
                if path is not None:
                    save_file({"prefix": feats.prefix, "body": feats.body}, str(path))
                self._query[key] = feats
        return self._query[key]

    def target(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._target:
            ids = torch.tensor(
                self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long
            )
            if ids.numel() == 0:
                raise ValueError(f"empty target {text!r}")
            self._target[text] = (ids, self._embed(ids))
        return self._target[text]

    @torch.no_grad()
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The decoder's input embeddings of ``ids``, float32 on the CPU (a lookup, no forward)."""
        return self.backbone.model.get_input_embeddings()(ids.to(self.backbone.device)).float().cpu()

    def warm(self, episodes: list[Episode], *, progress: bool = True) -> None:
        """Compute every episode's features now (one pass with a progress bar)."""
        from tqdm import tqdm

        for ep in tqdm(episodes, desc="backbone features", disable=not progress, mininterval=2.0):
            for d in ep.demonstrations:
                self.demonstration(d)
            self.query(ep.query)
            self.target(ep.target)
