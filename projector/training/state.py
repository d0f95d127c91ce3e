"""Training state for ``aim train --resume``: step, best held-out loss and the optimiser's moments, as
JSON plus safetensors (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"


def save_state(out: Path, step: int, best: float, optimizer: torch.optim.Optimizer, extra: dict) -> None:
    tensors = {}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        st = optimizer.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in st:
                tensors[f"{i}.{name}"] = st[name].detach().cpu().contiguous()
        if "step" in st:
            tensors[f"{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    save_file(tensors, str(out / STATE_TENSORS))
    (out / STATE_JSON).write_text(json.dumps({"step": step, "best_heldout": best, **extra}, indent=2))


def load_state(out: Path, optimizer: torch.optim.Optimizer) -> dict:
    info = json.loads((out / STATE_JSON).read_text())
    tensors = load_file(str(out / STATE_TENSORS))
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        if f"{i}.exp_avg" in tensors:
            optimizer.state[p] = {
                "step": tensors[f"{i}.step"].reshape(()).to(torch.float32),
                "exp_avg": tensors[f"{i}.exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{i}.exp_avg_sq"].to(p.device),
            }
    return info
