"""Normalised exact match on hand-computed cases."""

from __future__ import annotations

import pytest

from projector.evaluation.metrics import exact_match, normalize_answer


# -- exact match ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("blue", "blue", 1.0),
        (" The Blue. ", "blue", 1.0),
        ("a  red\tcircle!", "Red circle", 1.0),
        ("yes, it is", "yes", 0.0),
        ("blue shape", "blue", 0.0),
        ("", "no", 0.0),
    ],
)
def test_exact_match_normalisation(prediction: str, reference: str, expected: float) -> None:
    assert exact_match(prediction, reference) == expected


def test_exact_match_any_reference() -> None:
    assert exact_match("Gray", ["grey", "gray"]) == 1.0
    assert normalize_answer("An apple, the pie.") == "apple pie"
