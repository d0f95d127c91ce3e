"""The evaluation task suite, and the split that keeps it apart from training.

Every task yields ``EvalItem``s: up to ``max_k`` demonstrations (the k-shot set is always a prefix of
the (k+1)-shot one) and a query with its reference answer, deterministic for a seed.

- ``binding``: three shapes get made-up names only through the demonstrations ("Q: What is this called?
  A: dax"); the mapping is fresh in every episode and the query is a new image (new colour, size,
  place, background) of one of the three, so nothing but the demonstrations says which name is right.
  Chance is 1/3; the label-copy rate (the answer is one of the demonstrations' names) says whether the
  demonstrations reached the decoder at all. Demonstrations cycle through the classes, so any k >= 3
  shows every class.
- ``easy-vqa``: the easy-VQA test split with demonstrations from a pool of training-split questions
  (installed package ``easy-vqa``).
- ``description``: an open-ended description of a rendered scene of shapes ("A red star at the top
  left and a blue circle in the center."). Scored by unigram F1 between normalised answer and
  reference (SQuAD's F1): a description is right in parts (colour right, shape wrong), word order is
  free, and there is no single correct sentence, so exact match would score almost everything 0;
  agreement with raw ICL is reported beside it.

The split: ``TRAINING_TASKS`` (``projector.training.generic``) and ``EVAL_TASKS`` (here) declare each
task's prompt templates and, for closed tasks, label vocabulary; ``check_split`` refuses any shared
template, prompt frame (a template's first word, such as ``Q:`` or ``Caption:``) or label. ``aim eval``
runs it first. ``docs/fidelity.md`` lists the split.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw

from projector.training.episodes import Pair, demo_text
from projector.training.generic import TRAINING_TASKS, TaskSpec
from projector.training.scenes import SCENE_COLORS, draw_shape, render_scene

# The evaluation binding task's made-up names; training's are ``TRAIN_NONCE_WORDS`` (never shared).
EVAL_NONCE_WORDS = ("dax", "wug", "blicket", "fep", "toma", "zup", "kiki", "modi", "tufa", "pimwit",
                    "gazzer", "jeb")  # fmt: skip
BINDING_TEMPLATE = "Q: What is this called? A:"
BINDING_SHAPES = ("circle", "square", "star", "triangle", "diamond", "hexagon", "cross", "ellipse")
BINDING_CLASSES = 3
BINDING_BACKGROUNDS = {"white": (250, 250, 250), "cream": (245, 238, 220), "pale blue": (215, 230, 245),
                       "pale gray": (225, 225, 225)}  # fmt: skip
DESCRIPTION_TEMPLATE = "Describe what you see:"
EASY_VQA_TEMPLATE = "Question: {question} Answer:"
EASY_VQA_LABELS = frozenset({"yes", "no", "circle", "rectangle", "triangle", "red", "green", "blue", "yellow",
                             "black", "gray", "brown", "teal"})  # fmt: skip

EVAL_TASKS = (
    TaskSpec("binding", (BINDING_TEMPLATE,), frozenset(EVAL_NONCE_WORDS)),
    TaskSpec("easy-vqa", (EASY_VQA_TEMPLATE,), EASY_VQA_LABELS),
    TaskSpec("description", (DESCRIPTION_TEMPLATE,)),
)


class SplitError(ValueError):
    """A training task shares a template, a prompt frame or a label with an evaluation task."""


def _frame(template: str) -> str:
    return template.split()[0].lower()


def check_split(
    training: Sequence[TaskSpec] = TRAINING_TASKS, evaluation: Sequence[TaskSpec] = EVAL_TASKS
) -> None:
    """Raise ``SplitError`` naming every overlap between the training and the evaluation tasks."""
    problems = []
    for t in training:
        for e in evaluation:
            shared = set(t.templates) & set(e.templates)
            if shared:
                problems.append(f"{t.name} and {e.name} share the template {sorted(shared)}")
            frames = {_frame(x) for x in t.templates} & {_frame(x) for x in e.templates}
            if frames:
                problems.append(f"{t.name} and {e.name} share the prompt frame {sorted(frames)}")
            if t.labels is not None and e.labels is not None and t.labels & e.labels:
                problems.append(f"{t.name} and {e.name} share the labels {sorted(t.labels & e.labels)}")
    if problems:
        raise SplitError("training and evaluation overlap: " + "; ".join(problems))


@dataclass(frozen=True)
class EvalItem:
    demonstrations: tuple[Pair, ...]  # up to max_k; each text is demo_text(prompt, answer)
    labels: tuple[str, ...]  # each demonstration's answer, in the same order
    query: Pair  # query.text is the prompt the answer follows
    answer: str  # the reference
    qtype: str


@dataclass(frozen=True)
class EvalTask:
    name: str
    scoring: Literal["exact", "overlap"]  # normalised exact match, or unigram F1
    classification: bool  # closed answer set: the label-copy rate is reported
    chance: float | None  # accuracy of guessing among the demonstrated labels, where that is defined
    max_new_tokens: int
    build: Callable[[int, int, int, int], list[EvalItem]]  # (n, max_k, seed, pool) -> items


# -- binding --------------------------------------------------------------------------------------
def binding_image(rng: random.Random, shape: str, size: int = 96) -> Image.Image:
    """One shape of a random colour, size and place on a random pale background."""
    background = rng.choice(sorted(BINDING_BACKGROUNDS))
    image = Image.new("RGB", (size, size), BINDING_BACKGROUNDS[background])
    color = rng.choice([c for c in sorted(SCENE_COLORS) if c not in ("white", "gray")])
    r = size * rng.uniform(0.22, 0.34)
    cx, cy = (size / 2 + rng.uniform(-0.12, 0.12) * size for _ in range(2))
    draw_shape(ImageDraw.Draw(image), shape, cx, cy, r, SCENE_COLORS[color])
    return image


def binding_items(n: int, max_k: int, seed: int, _pool: int = 0) -> list[EvalItem]:
    items = []
    for i in range(n):
        rng = random.Random(f"binding-eval/{seed}/{i}")
        classes = rng.sample(BINDING_SHAPES, BINDING_CLASSES)
        names = dict(zip(classes, rng.sample(EVAL_NONCE_WORDS, BINDING_CLASSES), strict=True))
        order: list[str] = []
        while len(order) < max_k:
            order += rng.sample(classes, BINDING_CLASSES)
        order = order[:max_k]
        demos = tuple(Pair(binding_image(rng, c), demo_text(BINDING_TEMPLATE, names[c])) for c in order)
        query_class = rng.choice(classes)
        query = Pair(binding_image(rng, query_class), BINDING_TEMPLATE)
        items.append(EvalItem(demos, tuple(names[c] for c in order), query, names[query_class], "binding"))
    return items


# -- easy-VQA -------------------------------------------------------------------------------------
def easy_vqa_prompt(question: str) -> str:
    question = question.strip()
    return EASY_VQA_TEMPLATE.format(question=f"{question[:1].upper()}{question[1:]}")


def easy_vqa_items(n: int, max_k: int, seed: int, pool_size: int = 64) -> list[EvalItem]:
    """``n`` test questions, each with ``max_k`` demonstrations drawn from a pool of training questions
    (the sampling ``aim eval`` has always used, so earlier easy-VQA figures reproduce)."""
    from projector.models.aim_mini.data import load_questions

    rng = random.Random(seed)
    test_all, train_all = load_questions("test"), load_questions("train")
    tests = rng.sample(test_all, min(n, len(test_all)))
    pool = rng.sample(train_all, min(pool_size, len(train_all)))
    items = []
    for i, q in enumerate(tests):
        picks = random.Random(seed * 100_003 + i).sample(range(len(pool)), max_k)
        demos = tuple(Pair(pool[j].image, demo_text(easy_vqa_prompt(pool[j].question), pool[j].answer))
                      for j in picks)  # fmt: skip
        labels = tuple(pool[j].answer for j in picks)
        items.append(EvalItem(demos, labels, Pair(q.image, easy_vqa_prompt(q.question)), q.answer, q.qtype))
    return items


# -- description ----------------------------------------------------------------------------------
def describe(objects: Sequence[tuple[str, str, str]]) -> str:
    """The reference description of a scene's (colour, shape, position) objects."""
    parts = [f"a {c} {s} {'in the center' if p == 'center' else f'at the {p}'}" for c, s, p in objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[:1].upper() + text[1:] + "."


def description_items(n: int, max_k: int, seed: int, _pool: int = 0) -> list[EvalItem]:
    items = []
    for i in range(n):
        scenes = [render_scene(random.Random(f"description-eval/{seed}/{i}/{j}")) for j in range(max_k + 1)]
        *shown, asked = scenes
        demos = tuple(Pair(s.image, demo_text(DESCRIPTION_TEMPLATE, describe(s.objects))) for s in shown)
        labels = tuple(describe(s.objects) for s in shown)
        items.append(EvalItem(demos, labels, Pair(asked.image, DESCRIPTION_TEMPLATE), describe(asked.objects),
                              f"{len(asked.objects)} objects"))  # fmt: skip
    return items


TASKS: dict[str, EvalTask] = {
    "binding": EvalTask("binding", "exact", True, 1 / BINDING_CLASSES, 4, binding_items),
    "easy-vqa": EvalTask("easy-vqa", "exact", True, None, 6, easy_vqa_items),
    "description": EvalTask("description", "overlap", False, None, 24, description_items),
}
