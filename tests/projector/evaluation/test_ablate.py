"""The ablation script end to end on the tiny model: one cell per objective kind it is given, one shared
evaluation, one table."""

from __future__ import annotations

import json
from pathlib import Path

from projector.evaluation.ablate import main, middle_layer
from tests.helpers import write_episodes


def test_ablation_grid_trains_each_cell_and_writes_one_table(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_episodes(tmp_path, n=16)
    out = tmp_path / "ablate"
    argv = ["--model", str(tiny_model_dir), "--data", f"jsonl:{data}", "--out", str(out), "--objectives",
            "lm,both+rec", "--layers", "middle", "--kinds", "linear", "--steps", "2", "--n-test", "2",
            "--shots", "0,2", "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "feat")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "ablation.json").read_text())
    cells = {c["cell"]: c for c in result["cells"]}
    assert set(cells) == {"lm-middle-linear-2", "both+rec-middle-linear-2"}
    assert cells["lm-middle-linear-2"]["layer_index"] == middle_layer(str(tiny_model_dir), tmp_path) == 1
    assert (
        "kl" in cells["both+rec-middle-linear-2"]["heldout"]
        and "kl" not in cells["lm-middle-linear-2"]["heldout"]
    )
    table = (out / "ablation.md").read_text()
    assert "| both+rec-middle-linear-2 |" in table and "| raw-icl |" in table
    assert main(argv) == 0  # trained cells are reused, not retrained
