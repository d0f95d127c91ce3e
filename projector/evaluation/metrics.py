"""Few-shot evaluation metrics and loaders for the benchmarks' local files.

Metrics: normalised exact match, VQA accuracy (official normalisation, min(#humans/3, 1) averaged
over the 10 leave-one-out subsets of 9 annotators), CIDEr-D, ROC AUC (rank-based, ties averaged).

Loaders read the benchmarks' published file layouts from local copies (nothing is downloaded):
Flickr30k captions in Karpathy-split JSON, OK-VQA (VQA v2 question + annotation JSON), VizWiz-VQA
(one JSON list per split), Hateful Memes (jsonl).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# -- normalised exact match (SQuAD-style) ---------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(" " if c in _PUNCT else c for c in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in refs))


# -- VQA accuracy (the official VQA v2 evaluation's normalisation) --------------------------------
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
              ",", "?", "!"]  # fmt: skip
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_VQA_NUMBERS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
_VQA_NUMBERS["none"] = "0"
_VQA_ARTICLES = {"a", "an", "the"}
# The official map's common entries: apostrophe-less spellings -> the contraction.
_VQA_CONTRACTIONS = {
    w.replace("'", ""): w
    for w in (
        "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
        "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am "
        "mightn't might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she's should've "
        "shouldn't shouldn't've somebody'd somebody'll somebody's someone'd someone'll someone's something'd "
        "something'll that's there'd there're there's they'd they'll they're they've wasn't we'd've we've "
        "weren't what'll what're what's what've when's where'd where's where've who'd who'll who's who've "
        "why'll why're why's won't would've wouldn't wouldn't've y'all you'd you'll you're you've"
    ).split()
}


def vqa_normalize(answer: str) -> str:
    """The official VQA evaluation's answer processing: punctuation, then digits/articles/contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _VQA_PUNCT + ["'"]:
        if (p + " " in text or " " + p in text) or _VQA_COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _VQA_PERIOD_STRIP.sub("", out)
    words = []
    for word in out.lower().split():
        word = _VQA_NUMBERS.get(word, word)
        if word not in _VQA_ARTICLES:
            words.append(_VQA_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Standard VQA accuracy: for each of the n leave-one-out subsets of the n (usually 10) human
    answers, min(#matches in the subset / 3, 1); averaged. With 10 answers: 4+ agreeing -> 1.0,
    3 -> 0.9, 2 -> 0.6, 1 -> 0.3. Prediction and answers are normalised the same way."""
    if not human_answers:
        raise ValueError("no human answers")
    pred = vqa_normalize(prediction)
    gts = [vqa_normalize(a) for a in human_answers]
    matches = sum(g == pred for g in gts)
    total = 0.0
    for g in gts:
        others = matches - (g == pred)
        total += min(1.0, others / 3.0)
    return total / len(gts)


# -- CIDEr-D ---------------------------------------------------------------------------------------
def _cider_tokens(text: str) -> list[str]:
    return "".join(" " if c in _PUNCT else c for c in text.lower()).split()


def _ngrams(tokens: list[str], n_max: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, n_max + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], *, n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D (Vedantam et al. 2015, as in coco-caption's ``ciderD``): (corpus score, per-item scores).

    TF-IDF n-gram vectors (n = 1..4) with document frequencies from the reference corpus (one
    document per item); per n, the candidate's vector is clipped by the reference's
    (``min(c, r) * r``), divided by both norms and multiplied by a Gaussian length penalty
    ``exp(-(len_c - len_r)^2 / (2 sigma^2))``; averaged over n and over references, times 10.
    Tokenisation: lower case, punctuation removed, split on whitespace.
    """
    if len(candidates) != len(references):
        raise ValueError("one list of references per candidate")
    if not candidates:
        raise ValueError("no candidates")
    refs_counts = [[_ngrams(_cider_tokens(r), n) for r in refs] for refs in references]
    cand_counts = [_ngrams(_cider_tokens(c), n) for c in candidates]
    df: Counter = Counter()
    for refs in refs_counts:
        for gram in set().union(*(set(r) for r in refs)):
            df[gram] += 1
    log_n_docs = math.log(float(len(references)))

    def vec(counts: Counter) -> tuple[list[dict], list[float], int]:
        v: list[dict] = [{} for _ in range(n)]
        norms = [0.0] * n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            w = float(tf) * (log_n_docs - math.log(max(1.0, float(df[gram]))))
            v[k][gram] = w
            norms[k] += w * w
            if k == 0:
                length += tf
        return v, [math.sqrt(x) for x in norms], length

    scores = []
    for cand, refs in zip(cand_counts, refs_counts, strict=True):
        vc, nc, lc = vec(cand)
        per_ref = []
        for ref in refs:
            vr, nr, lr = vec(ref)
            delta = float(lc - lr)
            sims = []
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vc[k].items())
                if nc[k] != 0 and nr[k] != 0:
                    val /= nc[k] * nr[k]
                sims.append(val * math.exp(-(delta**2) / (2 * sigma**2)))
            per_ref.append(sum(sims) / n)
        scores.append(10.0 * sum(per_ref) / len(per_ref) if per_ref else 0.0)
    return sum(scores) / len(scores), scores


# -- ROC AUC ---------------------------------------------------------------------------------------
def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); tied scores get their average rank."""
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both positive and negative labels")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0  # ranks are 1-based
        for t in range(i, j + 1):
            ranks[order[t]] = avg
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


# -- benchmark loaders -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptionExample:
    image: Path
    captions: list[str]
    image_id: str


@dataclass(frozen=True)
class VqaExample:
    image: Path
    question: str
    answers: list[str]  # the human answers (10 for VQA v2 / OK-VQA / VizWiz)
    question_id: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MemeExample:
    image: Path
    text: str
    label: int | None  # 1 hateful, 0 not; None where the split has no labels
    id: str


def load_flickr30k(karpathy_json: Path, image_dir: Path, split: str | None = "test") -> list[CaptionExample]:
    """Flickr30k from Karpathy's ``dataset_flickr30k.json`` layout:
    ``{"images": [{"filename", "imgid", "split", "sentences": [{"raw", "tokens"}]}]}``."""
    data = json.loads(Path(karpathy_json).read_text())
    out = []
    for item in data["images"]:
        if split is not None and item.get("split") != split:
            continue
        captions = [s.get("raw") or " ".join(s["tokens"]) for s in item["sentences"]]
        out.append(
            CaptionExample(
                Path(image_dir) / item["filename"], captions, str(item.get("imgid", item["filename"]))
            )
        )
    return out


def coco_image_name(image_id: int, subset: str = "val2014") -> str:
    return f"COCO_{subset}_{int(image_id):012d}.jpg"


def load_okvqa(
    questions_json: Path, annotations_json: Path, image_dir: Path, *, image_subset: str = "val2014"
) -> list[VqaExample]:
    """OK-VQA (and VQA v2): ``{"questions": [{"image_id", "question", "question_id"}]}`` plus
    ``{"annotations": [{"question_id", "answers": [{"answer", ...}], ...}]}``; images are COCO files
    ``COCO_<subset>_<12-digit id>.jpg`` in ``image_dir``."""
    questions = json.loads(Path(questions_json).read_text())["questions"]
    annotations = {a["question_id"]: a for a in json.loads(Path(annotations_json).read_text())["annotations"]}
    out = []
    for q in questions:
        ann = annotations.get(q["question_id"])
        if ann is None:
            continue
        meta = {k: ann[k] for k in ("question_type", "answer_type") if k in ann}
        out.append(
            VqaExample(
                Path(image_dir) / coco_image_name(q["image_id"], image_subset),
                q["question"],
                [a["answer"] for a in ann["answers"]],
                str(q["question_id"]),
                meta,
            )
        )
    return out


def load_vizwiz(annotations_json: Path, image_dir: Path) -> list[VqaExample]:
    """VizWiz-VQA: one JSON list ``[{"image", "question", "answers": [{"answer", "answer_confidence"}],
    "answer_type", "answerable"}]``; the test split has no answers (those items get ``answers=[]``)."""
    items = json.loads(Path(annotations_json).read_text())
    out = []
    for item in items:
        meta = {k: item[k] for k in ("answer_type", "answerable") if k in item}
        out.append(
            VqaExample(
                Path(image_dir) / item["image"],
                item["question"],
                [a["answer"] for a in item.get("answers", [])],
                Path(item["image"]).stem,
                meta,
            )
        )
    return out


def load_hateful_memes(jsonl: Path, root: Path | None = None) -> list[MemeExample]:
    """Hateful Memes: one JSON object a line, ``{"id", "img": "img/01235.png", "label", "text"}``;
    ``img`` is relative to ``root`` (default: the jsonl's folder). Unlabelled splits give ``label=None``."""
    jsonl = Path(jsonl)
    root = Path(root) if root is not None else jsonl.parent
    out = []
    for line in jsonl.read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        label = item.get("label")
        out.append(
            MemeExample(
                root / item["img"], item["text"], None if label is None else int(label), str(item["id"])
            )
        )
    return out


@dataclass(frozen=True)
class EasyVqaExample:
    image: Path
    question: str
    answer: str
    qtype: str  # "yes/no", "color" or "shape"
    image_id: int


EASY_VQA_COLORS = ("red", "green", "blue", "yellow", "black", "gray", "brown", "teal")


def easy_vqa_data_dir() -> Path:
    """The ``data`` folder of the installed ``easy-vqa`` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("easy-VQA needs the PyPI package 'easy-vqa' (pip install easy-vqa)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_easy_vqa(split: str = "test", data_dir: Path | None = None) -> list[EasyVqaExample]:
    """easy-VQA (PyPI ``easy-vqa``): ``<split>/questions.json`` is a list of ``[question, answer,
    image_id]`` and ``<split>/images/<image_id>.png`` the images."""
    base = Path(data_dir or easy_vqa_data_dir()) / split
    out = []
    for question, answer, image_id in json.loads((base / "questions.json").read_text()):
        qtype = "yes/no" if answer in ("yes", "no") else "color" if answer in EASY_VQA_COLORS else "shape"
        out.append(
            EasyVqaExample(base / "images" / f"{image_id}.png", question, answer, qtype, int(image_id))
        )
    return out
