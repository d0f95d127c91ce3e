"""Generic synthetic episodes: image-description tasks on data unrelated to any evaluation benchmark.

Fashion-MNIST clothing photos (Debian package ``dataset-fashion-mnist``) and scenes of shapes
(``projector.training.scenes``). None of the tasks asks about a shape's colour or identity, or
whether a shape is present (the easy-VQA question families).
"""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

from PIL import Image

from projector.training.episodes import Episode, Pair, demo_text
from projector.training.scenes import Scene, render_scene

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle boot")  # fmt: skip
FASHION_KIND = ("top", "bottom", "top", "dress", "top", "footwear", "top", "footwear", "bag", "footwear")

NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def read_fashion_mnist(split: str = "train", data_dir: Path = FASHION_MNIST_DIR, limit: int | None = None):
    """(28x28 grayscale PIL image, label) pairs from the idx files of Debian's ``dataset-fashion-mnist``."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = Path(data_dir) / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = Path(data_dir) / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file():
        raise FileNotFoundError(f"{images_path} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(labels_path, "rb") as f:
        _, n = struct.unpack(">II", f.read(8))
        labels = f.read(n)
    with gzip.open(images_path, "rb") as f:
        _, n, rows, cols = struct.unpack(">IIII", f.read(16))
        n = min(n, limit) if limit else n
        raw = f.read(n * rows * cols)
    size = rows * cols
    return [(Image.frombytes("L", (cols, rows), raw[i * size : (i + 1) * size]), labels[i]) for i in range(n)]


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# Task formats: (prompt, answer) per item; every demonstration of an episode and its query share the
# task, so the demonstrations show what kind of answer is wanted. None of these is a question about
# a shape's colour or identity, or whether a shape is present (the easy-VQA question families).
def _scene_tasks(scene: Scene, rng: random.Random) -> dict[str, tuple[str, str]]:
    things = [f"a {c} {s}" for c, s, _ in scene.objects]
    short = [f"{c} {s}" for c, s, _ in scene.objects]
    c0, s0, p0 = scene.objects[0]
    return {
        "scene-caption": ("Caption:", f"{_and(things).capitalize()} on a {scene.background} background."),
        "scene-list": ("List the objects:", ", ".join(short)),
        "scene-count": ("Q: How many objects are in the picture? A:", NUMBER_WORDS[len(scene.objects)]),
        "scene-where": (f"Q: Where is the {c0} {s0}? A:", p0 if p0 == "center" else f"{p0}"),
        "scene-background": ("The background of this picture is", scene.background),
    }


def _fashion_tasks(label: int, rng: random.Random) -> dict[str, tuple[str, str]]:
    name = FASHION_CLASSES[label]
    other = label if rng.random() < 0.5 else rng.randrange(len(FASHION_CLASSES))
    article = "an" if name[0] in "aeiou" else "a"
    other_name = FASHION_CLASSES[other]
    other_article = "an" if other_name[0] in "aeiou" else "a"
    return {
        "fashion-caption": ("Caption:", f"A black and white photo of {article} {name}."),
        "fashion-name": ("Q: What is this item? A:", name),
        "fashion-kind": (
            "Question: Is this footwear, a top, a bottom, a dress or a bag? Answer:",
            FASHION_KIND[label],
        ),
        "fashion-yesno": (
            f"Question: Is this {other_article} {other_name}? Answer:",
            "yes" if other == label else "no",
        ),
    }


def generic_episodes(
    n_episodes: int,
    *,
    seed: int = 0,
    min_shots: int = 1,
    max_shots: int = 4,
    fashion: bool = True,
    fashion_dir: Path = FASHION_MNIST_DIR,
    n_scenes: int = 600,
    n_fashion: int = 600,
) -> list[Episode]:
    """Image-description episodes from rendered shape scenes and Fashion-MNIST (train split).

    Each episode draws one task (caption, object list, count, position, background; clothing
    caption, name, kind, yes/no about a named class) and ``k`` in ``[min_shots, max_shots]``
    demonstrations plus a query, all from distinct images. Images come from fixed pools
    (``n_scenes`` rendered, ``n_fashion`` read), so demonstration features are shared across
    episodes and cache well. With ``fashion=False`` (or the package missing) only scenes are used.
    """
    rng = random.Random(seed)
    scenes = [render_scene(random.Random(seed * 7919 + i)) for i in range(n_scenes)]
    pools: list[list[tuple[Image.Image, object]]] = [[(s.image, s) for s in scenes]]
    if fashion:
        try:
            items = read_fashion_mnist("train", fashion_dir, limit=n_fashion)
        except FileNotFoundError:
            items = []
        if items:
            pools.append(
                [(im.convert("RGB").resize((112, 112), Image.BICUBIC), label) for im, label in items]
            )
    episodes = []
    for _ in range(n_episodes):
        pool = rng.choice(pools)
        k = rng.randint(min_shots, max_shots)
        chosen = rng.sample(range(len(pool)), k + 1)
        item_rng = random.Random(rng.random())
        first = pool[chosen[0]][1]
        tasks = _scene_tasks(first, item_rng) if isinstance(first, Scene) else _fashion_tasks(first, item_rng)
        task = rng.choice(sorted(tasks))
        pairs = []
        for idx in chosen:
            image, meta = pool[idx]
            t = (_scene_tasks(meta, item_rng) if isinstance(meta, Scene) else _fashion_tasks(meta, item_rng))[
                task
            ]
            pairs.append((image, t))
        demos = tuple(Pair(im, demo_text(p, a)) for im, (p, a) in pairs[:-1])
        q_image, (q_prompt, q_answer) = pairs[-1]
        episodes.append(Episode(demos, Pair(q_image, q_prompt), q_answer))
    return episodes
