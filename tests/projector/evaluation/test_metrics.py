"""Evaluation metrics on hand-computed cases, and the benchmark loaders on tiny fixtures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from projector.evaluation.metrics import (
    cider_d,
    exact_match,
    load_flickr30k,
    load_hateful_memes,
    load_okvqa,
    load_vizwiz,
    normalize_answer,
    roc_auc,
    vqa_accuracy,
    vqa_normalize,
)

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


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


# -- VQA accuracy ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("agree", "expected"),
    # 10 humans, leave-one-out subsets of 9: m agreeing -> (m * min((m-1)/3, 1) + (10-m) * min(m/3, 1)) / 10
    [(10, 1.0), (4, 1.0), (3, 0.9), (2, 0.6), (1, 0.3), (0, 0.0)],
)
def test_vqa_accuracy_by_agreement(agree: int, expected: float) -> None:
    humans = ["cat"] * agree + ["dog"] * (10 - agree)
    assert vqa_accuracy("cat", humans) == pytest.approx(expected)


def test_vqa_normalisation() -> None:
    assert vqa_accuracy("Two.", ["2"] * 10) == 1.0  # number words, punctuation
    assert vqa_accuracy("the dog", ["dog"] * 10) == 1.0  # articles
    assert vqa_accuracy("ten", ["10"] * 4 + ["9"] * 6) == 1.0
    assert vqa_normalize("Yes!") == "yes"
    assert vqa_normalize("dont") == "don't"  # contractions
    assert vqa_normalize("1,000") == "1000"  # comma between digits kept together
    assert vqa_normalize("3.5") == "3.5"  # a decimal point is not a period


def test_vqa_accuracy_on_the_okvqa_fixture() -> None:
    items = load_okvqa(
        FIXTURES / "okvqa_questions.json", FIXTURES / "okvqa_annotations.json", Path("/images")
    )
    race = items[0]
    assert vqa_accuracy("race", race.answers) == 1.0  # 6 of 10
    assert vqa_accuracy("Motocross", race.answers) == pytest.approx(0.6)  # 2 of 10
    assert vqa_accuracy("golf", race.answers) == 0.0


# -- CIDEr-D --------------------------------------------------------------------------------------
def test_cider_identical_beats_disjoint() -> None:
    refs = [["a dog runs on the grass", "a brown dog running"], ["two people on a beach", "people walk at sunset"],
            ["a red car parked on a street"]]  # fmt: skip
    same, _ = cider_d(
        ["a dog runs on the grass", "two people on a beach", "a red car parked on a street"], refs
    )
    disjoint, per_item = cider_d(["purple elephant", "purple elephant", "purple elephant"], refs)
    assert same > 1.0
    assert disjoint == 0.0 and per_item == [0.0, 0.0, 0.0]


def test_cider_hand_computed_toy_corpus() -> None:
    # Two items, references "a b" and "c d": every n-gram has df 1, idf = log 2. An identical
    # two-word caption matches at n = 1, 2 (cosine 1) and has no 3-/4-grams (0): 10 * 2/4 = 5.
    score, per_item = cider_d(["a b", "c d"], [["a b"], ["c d"]])
    assert per_item == pytest.approx([5.0, 5.0])
    # References "a b c" and "a d e"; candidate "a b" for the first. idf(a) = 0, every other
    # n-gram log 2 =: L. n=1: (L*L) / (L * L*sqrt 2) = 1/sqrt 2; n=2: the same; n=3,4: 0.
    # Length penalty: exp(-(2-3)^2 / (2 * 6^2)).  Score = 10 * (2/sqrt 2)/4 * exp(-1/72).
    _, per_item = cider_d(["a b", "a d e"], [["a b c"], ["a d e"]])
    assert per_item[0] == pytest.approx(10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72))
    assert per_item[1] > per_item[0]


def test_cider_averages_over_references_and_clips() -> None:
    # Clipping (CIDEr-D): repeating a matched word does not raise the score.
    refs = [["a cat on a mat"], ["a dog in the fog"]]
    once, _ = cider_d(["cat on mat", "dog in fog"], refs)
    repeated, _ = cider_d(["cat cat cat on mat", "dog in fog"], refs)
    assert repeated < once


# -- ROC AUC --------------------------------------------------------------------------------------
def test_roc_auc_known_values() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_roc_auc_ties_count_half() -> None:
    # positives 0.5, 0.9; negatives 0.2, 0.5: pairs 1 + 0.5 (tie) + 1 + 1 = 3.5 of 4.
    assert roc_auc([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.1, 0.2])


# -- loaders --------------------------------------------------------------------------------------
def test_flickr30k_loader() -> None:
    test = load_flickr30k(FIXTURES / "flickr30k_karpathy.json", Path("/flickr"), split="test")
    assert len(test) == 1
    assert test[0].image == Path("/flickr/1007129816.jpg")
    assert test[0].captions[0].startswith("The man with pierced ears")
    assert (
        test[0].captions[1] == "a man with glasses is wearing a beer can crocheted hat"
    )  # tokens when no raw
    assert len(load_flickr30k(FIXTURES / "flickr30k_karpathy.json", Path("/flickr"), split=None)) == 3


def test_okvqa_loader() -> None:
    items = load_okvqa(FIXTURES / "okvqa_questions.json", FIXTURES / "okvqa_annotations.json", Path("/coco"))
    assert [i.question_id for i in items] == [
        "2971475",
        "10025",
    ]  # the question without annotation is dropped
    assert items[0].image == Path("/coco/COCO_val2014_000000297147.jpg")
    assert len(items[1].answers) == 10 and items[1].answers.count("fern") == 4
    assert items[0].meta["answer_type"] == "other"


def test_vizwiz_loader() -> None:
    items = load_vizwiz(FIXTURES / "vizwiz_val.json", Path("/vizwiz"))
    assert len(items) == 3
    assert items[1].image == Path("/vizwiz/VizWiz_val_00000001.jpg")
    assert vqa_accuracy("night time", items[1].answers) == 1.0
    assert items[0].meta == {"answer_type": "unanswerable", "answerable": 0}
    assert items[2].answers == []  # test split: no answers


def test_hateful_memes_loader() -> None:
    items = load_hateful_memes(FIXTURES / "hateful_memes_dev.jsonl")
    assert [i.id for i in items] == ["8291", "46971", "3745"]
    assert items[0].image == FIXTURES / "img" / "08291.png"
    assert [i.label for i in items] == [1, 0, None]
    assert roc_auc([i.label for i in items[:2]], [0.9, 0.1]) == 1.0
