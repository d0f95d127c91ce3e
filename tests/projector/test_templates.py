"""Which template wraps a query, from a model's recipe and the operator's overrides."""

from __future__ import annotations

import pytest

from projector.templates import Templates, model_templates, separated, split_at_demonstrations

RECIPE = {
    "query_template": "CHAT <image>\n{text} END",
    "text_query_template": "CHAT {text} END",
    "few_shot_query_template": "<image>\n{text}",
    "few_shot_text_query_template": "{text}",
}


def test_a_recipe_s_few_shot_templates_wrap_queries_after_demonstrations():
    t = model_templates(RECIPE)
    assert t.for_query(True) == "CHAT <image>\n{text} END"
    assert t.for_query(False) == "CHAT {text} END"
    assert t.for_query(True, few_shot=True) == "<image>\n{text}"
    assert t.for_query(False, few_shot=True) == "{text}"


def test_without_few_shot_templates_every_query_is_wrapped_alike():
    t = Templates(query="Q <image>\n{text}")
    assert t.for_query(True, few_shot=True) == t.for_query(True) == "Q <image>\n{text}"
    assert t.for_query(False, few_shot=True) == "{text}"


def test_an_operator_s_query_template_is_not_replaced_by_the_recipe_s_few_shot_one():
    t = model_templates(RECIPE, query="MINE <image>\n{text}")
    assert t.for_query(True, few_shot=True) == "MINE <image>\n{text}"
    assert t.for_query(False, few_shot=True) == "{text}"  # the text query was not overridden
    t = model_templates(RECIPE, query="MINE <image>\n{text}", few_shot_query="FEW <image>\n{text}")
    assert (t.for_query(True), t.for_query(True, few_shot=True)) == (
        "MINE <image>\n{text}",
        "FEW <image>\n{text}",
    )


def test_the_few_shot_templates_are_part_of_the_identity():
    assert (
        model_templates(RECIPE).identity()
        != model_templates({**RECIPE, "few_shot_text_query_template": "A {text}"}).identity()
    )


def test_a_demonstration_ends_with_one_separator():
    assert separated("Q: a? A: cat") == "Q: a? A: cat\n"
    assert separated("Q: a? A: cat\n") == "Q: a? A: cat\n"
    assert separated("a caption that runs on ") == "a caption that runs on "
    assert Templates().demonstration_prompt("A: cat") == "<image>\nA: cat\n"


def test_a_demonstrations_slot_splits_a_template_into_head_and_query():
    assert split_at_demonstrations("SYS\nUSER: {demonstrations}<image>\n{text} END") == (
        "SYS\nUSER: ",
        "<image>\n{text} END",
    )
    assert split_at_demonstrations("<image>\n{text}") == ("", "<image>\n{text}")


def test_a_slot_inside_a_token_is_refused_when_the_backbone_is_built(backbone):
    """The tiny tokenizer merges "ab" into one token: a slot between "a" and "b" cannot cut the prompt."""
    from projector.backbone import Backbone, BackboneError

    def build(few_shot: str) -> Backbone:
        return Backbone(
            backbone.model, backbone.processor, name="t", templates=Templates(few_shot_query=few_shot)
        )

    with pytest.raises(
        BackboneError, match=r"text before \{demonstrations\} \('a'\) does not tokenize on its own"
    ):
        build("a{demonstrations}b <image>\n{text}")
    build("a\n{demonstrations}b <image>\n{text}")  # after a newline: accepted
