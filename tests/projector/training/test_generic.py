"""Generic synthetic episodes: deterministic, and free of the easy-VQA question families."""

from __future__ import annotations

from projector.training.generic import generic_episodes


def test_generic_episodes_are_deterministic_and_not_easy_vqa() -> None:
    a = generic_episodes(40, seed=3, n_scenes=30, n_fashion=30)
    b = generic_episodes(40, seed=3, n_scenes=30, n_fashion=30)
    assert [(e.query.key, e.answer) for e in a] == [(e.query.key, e.answer) for e in b]
    for ep in a:
        assert 1 <= len(ep.demonstrations) <= 4
        texts = [d.text for d in ep.demonstrations] + [ep.query.text]
        for t in texts:  # the easy-VQA question families never appear
            assert (
                "what color" not in t.lower()
                and "what shape" not in t.lower()
                and "is there a" not in t.lower()
            )
