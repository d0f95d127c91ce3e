"""Training data for the AIM projector: episodes of demonstrations and a query with its answer.

An **episode** is what one training example is: ``k`` demonstrations ``(image, text)`` and a query
``(image, text)`` whose ``answer`` the language-model loss is taken on. Sources:

- **Episode JSONL** (``read_episodes_jsonl``), either one episode a line::

      {"demonstrations": [{"image": ..., "text": ...}, ...], "query": {"image": ..., "text": ...}, "answer": "..."}

  or one image-text record a line, grouped by ``"episode"`` (in file order; the group's last record
  is the query, its ``"answer"`` the target; a last record without ``"answer"`` is a query with an
  empty prompt whose ``text`` is the target, as for interleaved web documents)::

      {"image": ..., "text": ..., "episode": "e1"}

  ``image`` is a path (relative to the JSONL's folder), a data URL or bare base64.
- **MMC4** documents (``read_mmc4``): ``{"image_info": [{"image_name" | "raw_url", "matched_text_index",
  ...}], "text_list": [...]}``; each image is paired with its matched sentence.
- **OBELICS** documents (``read_obelics``): ``{"images": [url | None, ...], "texts": [str | None, ...]}``
  (aligned lists, one of the two set at each position); each image is paired with the nearest text,
  the following one first.
  For both web layouts images are looked up in a local directory by name (``image_name``, or the
  URL's last path segment, or the sha1 of the URL with the segment's extension); documents'
  images that are not there are skipped. ``document_episodes`` turns consecutive (image, text)
  pairs of a document into episodes (the paper's setting: predict an image's text from the
  preceding pairs).
- **Generic synthetic episodes** (``generic_episodes``): image-description tasks on data that has
  nothing to do with any evaluation benchmark: Fashion-MNIST clothing photos (Debian package
  ``dataset-fashion-mnist``) and scenes of shapes rendered here with PIL. See that function.

Text layout shared by training and evaluation: a demonstration's text is ``prompt + " " + answer``
ending in a newline (the separator between demonstrations); the query's text is the prompt, and the
target is ``" " + answer + "\\n"`` (no leading space when the prompt is empty).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import random
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image, ImageDraw

from projector.images import decode_image

ImageSource = Image.Image | str | Path


class DataError(ValueError):
    """A data file is malformed."""


# -- text layout ----------------------------------------------------------------------------------
def demo_text(prompt: str, answer: str) -> str:
    """A demonstration's text: prompt and answer, ending with the newline that separates demonstrations."""
    text = f"{prompt} {answer}" if prompt else answer
    return text if text.endswith(("\n", " ")) else text + "\n"


def target_text(prompt: str, answer: str) -> str:
    """What follows the query's prompt and carries the loss: the answer, then the newline that ends it."""
    lead = " " if prompt and not prompt.endswith((" ", "\n")) else ""
    return f"{lead}{answer.strip()}\n"


def first_line(generated: str) -> str:
    """The answer part of a generation: its first non-empty line."""
    for line in generated.splitlines():
        if line.strip():
            return line.strip()
    return ""


# -- items and episodes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One (image, text). ``image`` is a PIL image, a path or a base64 / data URL string."""

    image: ImageSource
    text: str
    base_dir: Path | None = field(default=None, compare=False)

    def load(self) -> Image.Image:
        return load_image(self.image, self.base_dir)

    @cached_property
    def key(self) -> str:
        """Content-derived id of (image, text): the cache key of its backbone features."""
        h = hashlib.sha256()
        h.update(_image_identity(self.image, self.base_dir))
        h.update(b"\0")
        h.update(self.text.encode())
        return h.hexdigest()[:32]


@dataclass(frozen=True)
class Episode:
    demonstrations: tuple[Pair, ...]
    query: Pair  # query.text is the prompt the answer follows
    answer: str

    @property
    def target(self) -> str:
        return target_text(self.query.text, self.answer)


def _image_identity(image: ImageSource, base_dir: Path | None) -> bytes:
    if isinstance(image, Image.Image):
        return hashlib.sha256(image.tobytes() + repr((image.mode, image.size)).encode()).digest()
    s = str(image)
    if _is_inline(s, base_dir):
        return hashlib.sha256(s.encode()).digest()
    return str(_path(s, base_dir).resolve()).encode()


def _path(s: str, base_dir: Path | None) -> Path:
    return Path(s) if base_dir is None else Path(base_dir) / s


def _is_inline(s: str, base_dir: Path | None) -> bool:
    """A data URL, or base64 that is not the name of an existing file."""
    if s.startswith("data:"):
        return True
    if len(s) < 16 or _path(s, base_dir).is_file():
        return False
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def load_image(image: ImageSource, base_dir: Path | None = None) -> Image.Image:
    """A PIL image (RGB) from an image, a path (relative to ``base_dir``), a data URL or base64."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    s = str(image)
    if s.startswith("data:"):
        return decode_image(base64.b64decode(s.split(",", 1)[1] if "," in s else ""))
    if _is_inline(s, base_dir):
        return decode_image(base64.b64decode(s))
    return decode_image(_path(s, base_dir).read_bytes())


# -- episode JSONL -------------------------------------------------------------------------------
def _pair(obj: dict, base_dir: Path, where: str) -> Pair:
    if not isinstance(obj, dict) or "image" not in obj or "text" not in obj:
        raise DataError(f"{where}: expected an object with 'image' and 'text'")
    return Pair(obj["image"], str(obj["text"]), base_dir)


def read_episodes_jsonl(path: Path) -> list[Episode]:
    """Episodes from a JSONL file in either layout (see the module docstring); layouts may mix."""
    path = Path(path)
    base = path.parent
    episodes: list[Episode] = []
    groups: dict[str, list[tuple[int, dict]]] = {}
    order: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON: {exc}") from exc
        if "demonstrations" in obj:
            demos = tuple(_pair(d, base, where) for d in obj["demonstrations"])
            query = _pair(obj.get("query"), base, where)
            if "answer" not in obj:
                raise DataError(f"{where}: an episode needs an 'answer'")
            episodes.append(
                Episode(
                    tuple(Pair(d.image, demo_text("", d.text), base) for d in demos),
                    query,
                    str(obj["answer"]),
                )
            )
        elif "episode" in obj:
            eid = str(obj["episode"])
            if eid not in groups:
                groups[eid] = []
                order.append(eid)
            groups[eid].append((n, obj))
        else:
            raise DataError(f"{where}: neither an episode ('demonstrations') nor a record with 'episode'")
    for eid in order:
        records = groups[eid]
        *demos, (n, last) = records
        where = f"{path}:{n}"
        query = _pair(last, base, where)
        if "answer" in last:
            answer, query = str(last["answer"]), query
        else:
            answer, query = query.text, Pair(query.image, "", base)
        pairs = tuple(_pair(r, base, f"{path}:{m}") for m, r in demos)
        episodes.append(
            Episode(tuple(Pair(p.image, demo_text("", p.text), base) for p in pairs), query, answer)
        )
    return episodes


# -- interleaved web documents -------------------------------------------------------------------
def _resolve(image_dir: Path, name: str | None, url: str | None) -> Path | None:
    candidates = []
    if name:
        candidates.append(image_dir / name)
    if url:
        segment = Path(urlparse(url).path).name
        if segment:
            candidates.append(image_dir / segment)
        digest = hashlib.sha1(url.encode()).hexdigest()
        candidates.append(image_dir / (digest + (Path(segment).suffix if segment else "")))
        candidates.append(image_dir / digest)
    return next((c for c in candidates if c.is_file()), None)


def _jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not JSON: {exc}") from exc


def read_mmc4(path: Path, image_dir: Path) -> Iterator[list[Pair]]:
    """Each MMC4 document as its (image, matched sentence) pairs in text order."""
    image_dir = Path(image_dir)
    for doc in _jsonl(Path(path)):
        texts = doc.get("text_list") or []
        pairs = []
        for info in sorted(doc.get("image_info") or [], key=lambda i: i.get("matched_text_index", 0)):
            idx = info.get("matched_text_index")
            if idx is None or not 0 <= idx < len(texts):
                continue
            found = _resolve(image_dir, info.get("image_name"), info.get("raw_url"))
            if found is not None and texts[idx].strip():
                pairs.append(Pair(str(found), texts[idx].strip()))
        yield pairs


def read_obelics(path: Path, image_dir: Path) -> Iterator[list[Pair]]:
    """Each OBELICS document as its (image, nearest text) pairs in document order."""
    image_dir = Path(image_dir)
    for doc in _jsonl(Path(path)):
        images, texts = doc.get("images") or [], doc.get("texts") or []
        if len(images) != len(texts):
            raise DataError(f"{path}: an OBELICS document has {len(images)} images but {len(texts)} texts")
        pairs = []
        for i, url in enumerate(images):
            if not url:
                continue
            after = next((t for t in texts[i + 1 :] if t and t.strip()), None)
            before = next((t for t in reversed(texts[:i]) if t and t.strip()), None)
            text = after or before
            found = _resolve(image_dir, None, url)
            if found is not None and text:
                pairs.append(Pair(str(found), text.strip()))
        yield pairs


def _clip_words(text: str, max_words: int) -> str:
    words = text.split()
    return " ".join(words[:max_words])


def document_episodes(
    documents: Iterable[Sequence[Pair]], *, max_shots: int = 4, max_words: int = 40
) -> list[Episode]:
    """Sliding windows over each document's pairs: up to ``max_shots`` preceding pairs are the
    demonstrations, the next pair's image is the query and its text (first ``max_words`` words) the target."""
    episodes = []
    for pairs in documents:
        pairs = [Pair(p.image, _clip_words(p.text, max_words), p.base_dir) for p in pairs]
        for i in range(1, len(pairs)):
            demos = pairs[max(0, i - max_shots) : i]
            q = pairs[i]
            episodes.append(
                Episode(
                    tuple(Pair(d.image, demo_text("", d.text), d.base_dir) for d in demos),
                    Pair(q.image, "", q.base_dir),
                    q.text,
                )
            )
    return episodes


# -- generic synthetic episodes -------------------------------------------------------------------
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                   "bag", "ankle boot")  # fmt: skip
FASHION_KIND = ("top", "bottom", "top", "dress", "top", "footwear", "top", "footwear", "bag", "footwear")

SCENE_SHAPES = ("circle", "square", "star", "ellipse", "diamond", "hexagon", "cross", "triangle")
SCENE_COLORS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (235, 210, 20),
    "orange": (245, 140, 20), "purple": (130, 50, 170), "pink": (240, 130, 190), "black": (15, 15, 15),
    "white": (250, 250, 250), "gray": (128, 128, 128), "brown": (120, 70, 30), "teal": (20, 140, 140),
}  # fmt: skip
SCENE_BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "light blue": (190, 215, 245),
                     "beige": (235, 225, 200), "dark green": (20, 70, 40), "light gray": (215, 215, 215)}  # fmt: skip
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


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: tuple[tuple[str, str, str], ...]  # (colour, shape, position)
    background: str


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    import math

    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ellipse":
        draw.ellipse([cx - r, cy - r * 0.55, cx + r, cy + r * 0.55], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "hexagon":
        draw.polygon(
            [(cx + r * math.cos(a * math.pi / 3), cy + r * math.sin(a * math.pi / 3)) for a in range(6)],
            fill=fill,
        )
    elif shape == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:  # pragma: no cover
        raise ValueError(shape)


def render_scene(rng: random.Random, size: int = 128) -> Scene:
    """1-3 shapes in distinct cells of a 3x3 grid on a plain background."""
    background = rng.choice(list(SCENE_BACKGROUNDS))
    image = Image.new("RGB", (size, size), SCENE_BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    n = rng.choice((1, 1, 2, 2, 3))
    cells = rng.sample(range(9), n)
    colors = [c for c in SCENE_COLORS if SCENE_COLORS[c] != SCENE_BACKGROUNDS[background]]
    objects = []
    cell = size / 3
    for c in cells:
        row, col = divmod(c, 3)
        color, shape = rng.choice(colors), rng.choice(SCENE_SHAPES)
        cx = (col + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        cy = (row + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        _draw_shape(draw, shape, cx, cy, cell * rng.uniform(0.3, 0.45), SCENE_COLORS[color])
        vertical = ("top", "middle", "bottom")[row]
        horizontal = ("left", "center", "right")[col]
        position = "center" if (row, col) == (1, 1) else f"{vertical} {horizontal}".replace("middle ", "")
        position = position.replace(" center", "")
        objects.append((color, shape, position))
    return Scene(image, tuple(objects), background)


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
