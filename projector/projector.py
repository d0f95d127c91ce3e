"""The AIM projector: maps backbone hidden states at text positions to fused tokens.

Checkpoint format: a directory with ``projector.json`` (the config, naming the backbone it was made
for) and ``model.safetensors`` (the weights). No pickle. An optional ``training.json`` next to them
records how the projector was made (backbone identity, objective, data, steps) and, once ``aim eval
--record-into`` has measured them, its fidelity figures. Provenance is kept out of the config and out
of ``Projector.digest``: recording a measurement never changes a bank fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save, save_file
from torch import nn

CONFIG_FILE = "projector.json"
WEIGHTS_FILE = "model.safetensors"
PROVENANCE_FILE = "training.json"
FORMAT_VERSION = 1


class ProjectorMismatchError(ValueError):
    """The checkpoint was made for another backbone, or is not a projector checkpoint."""


class ProjectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["linear", "mlp", "residual"] = Field(
        "linear",
        description="linear: Linear(d, d); mlp: x + W2·gelu(W1·x); residual: e + Linear(d, d)(x), e the "
        "demonstration text's own input embeddings",
    )
    hidden_size: int = Field(gt=0)
    layer: int = Field(-1, description="which backbone hidden-state layer feeds the projector")
    backbone: str = Field(description="name of the backbone the projector was made for")
    format_version: int = FORMAT_VERSION


class Projector(nn.Module):
    """Identity-initialised, so an untrained projector passes hidden states through unchanged."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        # How the checkpoint was made (``training.json``); never part of ``digest``.
        self.provenance: dict[str, Any] | None = None
        d = config.hidden_size
        self.linear = nn.Linear(d, d)
        with torch.no_grad():
            if config.kind == "linear":
                self.linear.weight.copy_(torch.eye(d))
                self.linear.bias.zero_()
        if config.kind == "residual":
            # Starts as the demonstration's text alone (the hidden-state term at zero): the words, labels
            # included, reach the decoder exactly, and training adds what the hidden states know of the image.
            with torch.no_grad():
                self.linear.weight.zero_()
                self.linear.bias.zero_()
        if config.kind == "mlp":
            # Residual MLP whose output layer starts at zero: identity at initialisation too. The hidden
            # layer is seeded: its weights enter the bank fingerprint, which must be the same at every
            # start (an unseeded one gave every restart a new fingerprint and a cold bank).
            seeded = torch.Generator().manual_seed(0)
            bound = 1 / math.sqrt(d)
            with torch.no_grad():
                self.linear.weight.uniform_(-bound, bound, generator=seeded)
                self.linear.bias.uniform_(-bound, bound, generator=seeded)
            self.out = nn.Linear(d, d)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def needs_text(self) -> bool:
        """Whether ``forward`` also takes the demonstration text's input embeddings."""
        return self.config.kind == "residual"

    def forward(self, hidden_states: torch.Tensor, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Fused tokens [n, d] from the hidden states at a demonstration's n text positions (and, for
        ``residual``, the input embeddings of the same n tokens)."""
        if self.config.kind == "linear":
            return self.linear(hidden_states)
        if self.config.kind == "residual":
            if text_embeds is None or text_embeds.shape != hidden_states.shape:
                raise ValueError(
                    "a residual projector needs the text's input embeddings, one row per hidden state"
                )
            return text_embeds.to(hidden_states.dtype) + self.linear(hidden_states)
        return hidden_states + self.out(nn.functional.gelu(self.linear(hidden_states)))

    # -- checkpoint format ----------------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}

    def digest(self) -> str:
        """sha256 of config and weights: part of the bank fingerprint."""
        h = hashlib.sha256(self.config.model_dump_json().encode())
        h.update(save(self._state()))  # safetensors bytes are deterministic for equal tensors
        return h.hexdigest()

    def save(self, out_dir: Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(self._state(), str(out_dir / WEIGHTS_FILE), metadata={"format": "aim-projector"})
        (out_dir / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2))
        return out_dir

    @classmethod
    def load(
        cls, checkpoint: Path, *, backbone: str | None = None, hidden_size: int | None = None
    ) -> Projector:
        """Load a checkpoint, refusing one made for another backbone."""
        checkpoint = Path(checkpoint)
        try:
            config = ProjectorConfig.model_validate_json((checkpoint / CONFIG_FILE).read_text())
        except FileNotFoundError as exc:
            raise ProjectorMismatchError(
                f"{checkpoint} is not a projector checkpoint: no {CONFIG_FILE}"
            ) from exc
        except ValueError as exc:
            raise ProjectorMismatchError(f"{checkpoint / CONFIG_FILE} is invalid: {exc}") from exc
        if backbone is not None and config.backbone != backbone:
            raise ProjectorMismatchError(
                f"projector {checkpoint} was made for backbone {config.backbone!r}, not {backbone!r}"
            )
        if hidden_size is not None and config.hidden_size != hidden_size:
            raise ProjectorMismatchError(
                f"projector {checkpoint} has hidden size {config.hidden_size}, the backbone has {hidden_size}"
            )
        projector = cls(config)
        state = load_file(str(checkpoint / WEIGHTS_FILE))
        missing, unexpected = projector.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ProjectorMismatchError(
                f"projector weights do not match kind {config.kind!r}: "
                f"missing {missing}, unexpected {unexpected}"
            )
        projector.provenance = read_provenance(checkpoint)
        return projector.eval()

    @classmethod
    def identity(cls, *, backbone: str, hidden_size: int, layer: int = -1, kind: str = "linear") -> Projector:
        return cls(ProjectorConfig(kind=kind, hidden_size=hidden_size, layer=layer, backbone=backbone)).eval()


# -- provenance (training.json): how a checkpoint was made and what it measured ----------------------
def read_provenance(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's ``training.json``, or None when it has none (or an unreadable one)."""
    path = Path(checkpoint) / PROVENANCE_FILE
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def write_provenance(checkpoint: Path, provenance: dict[str, Any]) -> Path:
    """Write ``training.json`` atomically (a reader never sees half a file)."""
    path = Path(checkpoint) / PROVENANCE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def record_fidelity(checkpoint: Path, key: str, figures: dict[str, Any]) -> Path:
    """Merge ``figures`` under ``fidelity[key]`` of the checkpoint's ``training.json`` (created if absent).

    ``key`` names what was measured (benchmark and seed), so measurements on several tasks coexist and a
    re-run replaces its own entry. The weights and ``projector.json`` are not touched.
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / CONFIG_FILE).is_file():
        raise ProjectorMismatchError(f"{checkpoint} is not a projector checkpoint: no {CONFIG_FILE}")
    provenance = read_provenance(checkpoint) or {}
    provenance.setdefault("fidelity", {})[key] = figures
    return write_provenance(checkpoint, provenance)
