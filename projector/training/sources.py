"""``--data`` specs to episodes: the one place that knows every training source's spelling."""

from __future__ import annotations

import logging
from pathlib import Path

from projector.training.config import TrainingError
from projector.training.episodes import (
    Episode,
    document_episodes,
    read_episodes_jsonl,
    read_mmc4,
    read_obelics,
)
from projector.training.generic import (
    FASHION_MNIST_DIR,
    binding_episodes,
    fashion_mnist_installed,
    generic_episodes,
)

log = logging.getLogger(__name__)

SPECS = "generic[:N], scenes[:N], binding[:N], jsonl:PATH, mmc4:PATH:IMAGE_DIR, obelics:PATH:IMAGE_DIR"


def load_sources(specs: list[str], *, seed: int, max_shots: int) -> list[Episode]:
    episodes: list[Episode] = []
    if any(s.split(":")[0] in ("generic", "binding") for s in specs) and not fashion_mnist_installed():
        # Not an error (the shapes still train a projector), but not the data the docs describe.
        log.warning("Fashion-MNIST is not in %s (apt-get install dataset-fashion-mnist): generic episodes "
                    "have no clothing and binding episodes bind rendered shapes", FASHION_MNIST_DIR)  # fmt: skip
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if kind in ("generic", "scenes", "binding"):
            if rest and not rest.isdigit():
                raise TrainingError(f"--data {kind}[:N] expected, got {spec!r}")
            n = int(rest) if rest else 2000
            if kind == "binding":
                episodes += binding_episodes(n, seed=seed, max_shots=max(2, max_shots))
            else:
                episodes += generic_episodes(n, seed=seed, max_shots=max_shots, fashion=kind == "generic")
        elif kind == "jsonl":
            episodes += read_episodes_jsonl(Path(rest))
        elif kind in ("mmc4", "obelics"):
            path, _, image_dir = rest.rpartition(":")
            if not path:
                raise TrainingError(f"--data {kind}:JSONL:IMAGE_DIR expected, got {spec!r}")
            reader = read_mmc4 if kind == "mmc4" else read_obelics
            episodes += document_episodes(reader(Path(path), Path(image_dir)), max_shots=max_shots)
        else:
            raise TrainingError(f"unknown --data source {spec!r}: {SPECS}")
    return episodes
