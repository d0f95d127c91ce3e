"""The evaluation suite: deterministic items, fresh bindings, prefixes across k, and a split that keeps
training's templates, prompt frames and labels away from every evaluation task."""

from __future__ import annotations

import pytest

from projector.evaluation.tasks import (
    EVAL_NONCE_WORDS,
    EVAL_TASKS,
    SplitError,
    TaskSpec,
    binding_items,
    check_split,
    description_items,
)
from projector.training.generic import TRAIN_NONCE_WORDS, TRAINING_TASKS, binding_episodes, generic_episodes


def test_training_and_evaluation_tasks_share_no_template_frame_or_label() -> None:
    check_split()  # the declared split
    assert not set(TRAIN_NONCE_WORDS) & set(EVAL_NONCE_WORDS)
    with pytest.raises(SplitError, match="share the prompt frame \\['q:'\\]"):
        check_split([*TRAINING_TASKS, TaskSpec("leak", ("Q: What is this item? A:",))], EVAL_TASKS)
    with pytest.raises(SplitError, match="share the labels \\['dax'\\]"):
        check_split([TaskSpec("leak", ("Its name:",), frozenset({"dax"}))], EVAL_TASKS)


def test_generated_training_episodes_keep_to_the_declared_split() -> None:
    """What training generates uses only declared templates (first word) and declared labels."""
    declared_frames = {t.split()[0] for spec in TRAINING_TASKS for t in spec.templates}
    closed = {spec.name: spec.labels for spec in TRAINING_TASKS if spec.labels is not None}
    all_labels = set().union(*closed.values())
    eval_labels = set().union(*(s.labels for s in EVAL_TASKS if s.labels is not None))
    episodes = generic_episodes(60, seed=1, n_scenes=30, n_fashion=30) + binding_episodes(
        20, seed=1, n_images=200
    )
    for ep in episodes:
        for text in [d.text for d in ep.demonstrations] + [ep.query.text]:
            assert text.split()[0] in declared_frames, text
        assert ep.answer not in eval_labels, ep.answer
    binding_answers = {ep.answer for ep in episodes[60:]}
    assert binding_answers <= set(TRAIN_NONCE_WORDS) and binding_answers <= all_labels


def test_binding_items_are_deterministic_with_fresh_mappings_and_prefix_shots() -> None:
    a, b = binding_items(12, 6, seed=3), binding_items(12, 6, seed=3)
    assert [(i.query.key, i.answer, i.labels) for i in a] == [(i.query.key, i.answer, i.labels) for i in b]
    assert binding_items(12, 6, seed=4)[0].query.key != a[0].query.key
    mappings = set()
    for item in a:
        assert len(item.demonstrations) == 6 and set(item.labels) <= set(EVAL_NONCE_WORDS)
        assert len(set(item.labels[:3])) == 3  # the first three demonstrations show every class
        assert item.answer in item.labels
        assert item.query.key not in {d.key for d in item.demonstrations}  # a new image
        assert all(d.text == f"Q: What is this called? A: {label}\n" for d, label in
                   zip(item.demonstrations, item.labels, strict=True))  # fmt: skip
        mappings.add(tuple(sorted(set(item.labels))))
    assert len(mappings) > 6  # a fresh mapping per episode
    shorter = binding_items(12, 3, seed=3)
    assert [i.labels for i in shorter] == [i.labels[:3] for i in a]  # fewer shots: a prefix


def test_description_items_describe_their_scene() -> None:
    items = description_items(4, 2, seed=0)
    assert all(len(i.demonstrations) == 2 and i.answer.endswith(".") for i in items)
    assert items[0].demonstrations[0].text.startswith("Describe what you see: A ")
