"""Normalised exact match, unigram F1, label copying, the sign test and the fidelity measures on
hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from projector.evaluation.fidelity import first_token_agrees, kl_divergence
from projector.evaluation.metrics import (
    exact_match,
    is_label_copy,
    normalize_answer,
    paired,
    sign_test,
    token_f1,
)


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


# -- fidelity and paired tests --------------------------------------------------------------------
def test_token_f1_gives_partial_credit() -> None:
    assert token_f1("a red circle", "A red circle.") == 1.0
    assert token_f1("red star", "red circle") == 0.5
    assert token_f1("blue", "red circle") == 0.0


def test_label_copy_is_membership_after_normalisation() -> None:
    assert is_label_copy(" Dax.", ["wug", "dax"]) and not is_label_copy("daxwug", ["wug", "dax"])
    assert not is_label_copy("dax", [])


def test_sign_test_matches_hand_computed_values() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)  # all five discordant pairs one way
    assert sign_test(3, 3) == 1.0
    assert paired([1, 1, 0, 1], [0, 1, 0, 0]) == (2, 0, 0.5)


def test_kl_and_first_token_agreement() -> None:
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert kl_divergence(teacher, teacher) == pytest.approx(0.0, abs=1e-7)
    assert kl_divergence(teacher, teacher.flip(-1)) > 0.5
    assert first_token_agrees(teacher, teacher + 1.0)
    student = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    assert not first_token_agrees(teacher, student)
    assert first_token_agrees(teacher, student, suppressed=[1])  # token 1 forbidden as a first token
