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
- **Generic synthetic episodes** (``projector.training.generic``): image-description tasks on data
  that has nothing to do with any evaluation benchmark: Fashion-MNIST clothing photos and rendered
  scenes of shapes.

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from projector.images import decode_image
from projector.templates import separated

ImageSource = Image.Image | str | Path


class DataError(ValueError):
    """A data file is malformed."""


# -- text layout ----------------------------------------------------------------------------------
def demo_text(prompt: str, answer: str) -> str:
    """A demonstration's text: prompt and answer, ending with the newline that separates demonstrations."""
    return separated(f"{prompt} {answer}" if prompt else answer)


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
