"""Generic synthetic episodes: image-description tasks on data unrelated to any evaluation benchmark.

Fashion-MNIST clothing photos (Debian package ``dataset-fashion-mnist``) and scenes of shapes
(``projector.training.scenes``). None of the tasks asks about a shape's colour or identity, or
whether a shape is present (the easy-VQA question families).

The train/evaluation split is declared here as data (``TRAINING_TASKS``: each task's prompt template
and, for a task with a closed answer set, its label vocabulary) and checked against the evaluation
suite's declaration by ``projector.evaluation.tasks.check_split``: no template, no prompt frame (a
template's first word, e.g. ``Q:``) and no label is shared. ``binding_episodes`` teaches the *skill*
the evaluation's binding task measures (a made-up name bound to a class only through demonstrations)
with its own template, its own made-up words (``TRAIN_NONCE_WORDS``) and clothing photos instead of
shapes.
"""

from __future__ import annotations

import gzip
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from projector.training.episodes import Episode, Pair, demo_text
from projector.training.scenes import Scene, render_scene

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle boot")  # fmt: skip
FASHION_KIND = ("top", "bottom", "top", "dress", "top", "footwear", "top", "footwear", "bag", "footwear")

NUMBER_WORDS = ("zero", "one", "two", "three", "four")
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
# Made-up names for training's binding episodes; the evaluation's binding task has its own list
# (``projector.evaluation.tasks.EVAL_NONCE_WORDS``) and the two never share a word.
TRAIN_NONCE_WORDS = ("lorp", "vek", "snib", "quoff", "trelb", "mib", "gorp", "yeen", "plonk", "darsh", "nuv",
                     "spaw", "frell", "obin", "tesk", "wimble")  # fmt: skip
BINDING_TEMPLATE = "This object is named"
# Made-up words for the least-squares initialisation's vocabulary demonstrations (``vocabulary_pairs``):
# a linear map fitted only on the episodes' texts can only emit the few hundred tokens they use, and an
# evaluation label ("blicket") is made of subword pieces they never do.
VOCABULARY_WORDS = 2000
# Two or three closed syllables (consonant, vowel, consonant), no w- or z- onset: no such word is an
# evaluation label (``check_split`` verifies it) and each takes several subword tokens.
_ONSETS, _NUCLEI, _CODAS = "bdfghklmnprstv", "aeiou", "bdfgklmnprstxz"


def vocabulary_words(n: int = VOCABULARY_WORDS, seed: int = 0) -> tuple[str, ...]:
    """``n`` distinct made-up words, the same for a given seed."""
    rng = random.Random(f"vocabulary/{seed}")
    words: dict[str, None] = {}
    while len(words) < n:
        syllables = [
            rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(rng.randint(2, 3))
        ]
        words["".join(syllables)] = None
    return tuple(words)


@dataclass(frozen=True)
class TaskSpec:
    """A task as the train/evaluation split sees it: its prompt template(s) and closed label set."""

    name: str
    templates: tuple[str, ...]  # '{...}' marks a slot
    labels: frozenset[str] | None = None  # the whole answers of a closed task; None: open-ended


def _scene_backgrounds() -> frozenset[str]:
    from projector.training.scenes import SCENE_BACKGROUNDS

    return frozenset(f"{b} background" for b in SCENE_BACKGROUNDS)


TRAINING_TASKS = (
    TaskSpec("scene-caption", ("Caption:",)),
    TaskSpec("scene-list", ("List the objects:",)),
    TaskSpec("scene-count", ("Number of objects:",), frozenset(NUMBER_WORDS)),
    TaskSpec("scene-where", ("Position of the {color} {shape}:",), frozenset(POSITIONS)),
    TaskSpec("scene-background", ("Backdrop:",), _scene_backgrounds()),
    TaskSpec("fashion-caption", ("Caption:",)),
    TaskSpec("fashion-name", ("Item name:",), frozenset(FASHION_CLASSES)),
    TaskSpec(
        "fashion-kind", ("Kind of clothing (footwear, top, bottom, dress or bag):",), frozenset(FASHION_KIND)
    ),  # fmt: skip
    TaskSpec("fashion-claim", ("Claim: this is {article} {name}. Verdict:",), frozenset({"true", "false"})),
    TaskSpec("binding", (BINDING_TEMPLATE,), frozenset(TRAIN_NONCE_WORDS)),
    TaskSpec("vocabulary", (BINDING_TEMPLATE,), frozenset(vocabulary_words())),  # --init lstsq only
    TaskSpec("reconstruction", ("\nRepeat:",)),  # the trainer's reconstruction cue (RECONSTRUCTION_CUE)
)


def fashion_mnist_installed(data_dir: Path = FASHION_MNIST_DIR) -> bool:
    """Whether Debian's ``dataset-fashion-mnist`` is where ``read_fashion_mnist`` looks. Without it
    ``generic`` episodes have no clothing and ``binding`` episodes bind rendered shapes: other data."""
    return (Path(data_dir) / "train-images-idx3-ubyte.gz").is_file()


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
        "scene-count": ("Number of objects:", NUMBER_WORDS[len(scene.objects)]),
        "scene-where": (f"Position of the {c0} {s0}:", p0),
        "scene-background": ("Backdrop:", f"{scene.background} background"),
    }


def _fashion_tasks(label: int, rng: random.Random) -> dict[str, tuple[str, str]]:
    name = FASHION_CLASSES[label]
    other = label if rng.random() < 0.5 else rng.randrange(len(FASHION_CLASSES))
    article = "an" if name[0] in "aeiou" else "a"
    other_name = FASHION_CLASSES[other]
    other_article = "an" if other_name[0] in "aeiou" else "a"
    return {
        "fashion-caption": ("Caption:", f"A black and white photo of {article} {name}."),
        "fashion-name": ("Item name:", name),
        "fashion-kind": ("Kind of clothing (footwear, top, bottom, dress or bag):", FASHION_KIND[label]),
        "fashion-claim": (
            f"Claim: this is {other_article} {other_name}. Verdict:",
            "true" if other == label else "false",
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


def binding_episodes(
    n_episodes: int,
    *,
    seed: int = 0,
    min_shots: int = 2,
    max_shots: int = 6,
    n_classes: int = 3,
    fashion_dir: Path = FASHION_MNIST_DIR,
    n_images: int = 600,
) -> list[Episode]:
    """Made-up names bound to classes only through the demonstrations (training's version of the skill).

    Each episode draws ``n_classes`` clothing classes (rendered shapes when Fashion-MNIST is not
    installed) and gives each a fresh word from ``TRAIN_NONCE_WORDS``; demonstrations cycle through the
    classes, and the query is a new image of one of them whose answer is its episode-local name.
    """
    rng = random.Random(seed * 1_000_033 + 17)
    try:
        items = read_fashion_mnist("train", fashion_dir, limit=n_images)
        pool = [(im.convert("RGB").resize((112, 112), Image.BICUBIC), int(label)) for im, label in items]
    except FileNotFoundError:
        from projector.training.scenes import SCENE_COLORS, SHAPES, shape_image

        colors = list(SCENE_COLORS)
        pool = [(shape_image((112, 112), colors[i % len(colors)], SHAPES[i % len(SHAPES)]), i % len(SHAPES))
                for i in range(n_images)]  # fmt: skip
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(pool):
        by_class.setdefault(label, []).append(i)
    classes = sorted(c for c, members in by_class.items() if len(members) >= max_shots + 1)
    episodes = []
    for _ in range(n_episodes):
        chosen = rng.sample(classes, n_classes)
        names = dict(zip(chosen, rng.sample(TRAIN_NONCE_WORDS, n_classes), strict=True))
        k = rng.randint(max(min_shots, 1), max_shots)
        order = [chosen[i % n_classes] for i in range(k)]
        rng.shuffle(order)
        query_class = rng.choice(chosen)
        picks = {c: rng.sample(by_class[c], order.count(c) + (c == query_class)) for c in chosen}
        demos = tuple(Pair(pool[picks[c].pop()][0], demo_text(BINDING_TEMPLATE, names[c])) for c in order)
        query = Pair(pool[picks[query_class].pop()][0], BINDING_TEMPLATE)
        episodes.append(Episode(demos, query, names[query_class]))
    return episodes


def vocabulary_pairs(episodes: list[Episode], n: int = VOCABULARY_WORDS, seed: int = 0) -> list[Pair]:
    """``n`` demonstrations that name the episodes' own images with ``vocabulary_words``: rows for the
    least-squares initialisation that cover subword tokens the episodes' texts never use."""
    demos = list({d.key: d for ep in episodes for d in ep.demonstrations}.values())
    if not demos:
        return []
    return [
        Pair(demos[i % len(demos)].image, demo_text(BINDING_TEMPLATE, word), demos[i % len(demos)].base_dir)
        for i, word in enumerate(vocabulary_words(n, seed))
    ]
