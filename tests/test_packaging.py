"""A wheel built from the tracked files carries what the server's defaults need at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = [
    "projector/checkpoints/aim-mini-generic/projector.json",
    "projector/checkpoints/aim-mini-generic/model.safetensors",
    "projector/models/aim_mini/weights/connector.safetensors",
    "projector/models/aim_mini/weights/connector.json",
    "projector/models/aim_mini/assets/imagenet_classes.txt",  # the caption's class names
    "server/app.py",
    "bank/store.py",
]


def test_wheel_contains_shipped_weights_and_checkpoints(tmp_path: Path):
    # Build from a copy of the tracked files, as a clean checkout would: nothing untracked can leak in,
    # and no build/ or egg-info is left in the working tree.
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    src = tmp_path / "src"
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
    )
    (wheel,) = out.glob("aim_serve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in NEEDED if n not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert not any(n.startswith("tests/") for n in names)
    # The shipped connector in the wheel is byte-identical to the repository's (no LFS pointer, no text).
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("projector/models/aim_mini/weights/connector.safetensors")
    assert shipped == (REPO / "projector/models/aim_mini/weights/connector.safetensors").read_bytes()
