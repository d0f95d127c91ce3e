"""Where a conversation's earlier turns go in the query's prompt (``conversation_prompt``).

The property everything else rests on: without earlier turns the prompt is the query template's, to the
byte, so a one-message chat completion and ``/generate`` build the same prompt.
"""

from __future__ import annotations

import pytest

from projector.backbone import Backbone
from projector.models.aim_mini.build import CHAT_TEMPLATE, QUERY_CHAT_TEMPLATE
from projector.templates import ConversationError, conversation_prompt

IMAGE_QUERY = QUERY_CHAT_TEMPLATE.format(content="<image>\n{text}")  # aim-mini's query template
TEXT_QUERY = QUERY_CHAT_TEMPLATE.format(content="{text}")
HISTORY = [("system", "Answer in one word."), ("user", "Colour of grass?"), ("assistant", "green")]


@pytest.fixture(scope="module")
def smollm2_chat(backbone: Backbone):
    """SmolLM2's chat template (aim-mini's), rendered by a real tokenizer."""

    def render(messages: list[dict[str, str]]) -> str:
        return backbone.tokenizer.apply_chat_template(
            messages, chat_template=CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )

    return render


@pytest.mark.parametrize("template", [IMAGE_QUERY, TEXT_QUERY, "<image>\n{text}", "{text}"])
def test_without_earlier_turns_the_prompt_is_the_query_template(template, smollm2_chat):
    for render in (None, smollm2_chat):
        assert conversation_prompt(template, [], "Q: colour? A:", render) == template.format(
            text="Q: colour? A:"
        )


def test_earlier_turns_go_through_the_chat_template_when_the_query_template_is_its_user_turn(smollm2_chat):
    prompt = conversation_prompt(IMAGE_QUERY, HISTORY, "And this one?", smollm2_chat)
    assert prompt == (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n"  # the caller's system turn replaces the default
        "<|im_start|>user\nColour of grass?<|im_end|>\n"
        "<|im_start|>assistant\ngreen<|im_end|>\n"
        "<|im_start|>user\n<image>\nAnd this one?<|im_end|>\n"  # the query turn as the query template has it
        "<|im_start|>assistant\n"
    )
    # Without a system turn the chat template's default one opens the prompt, as in the query template.
    prompt = conversation_prompt(TEXT_QUERY, HISTORY[1:], "And the sky?", smollm2_chat)
    assert prompt.startswith(TEXT_QUERY.split("<|im_start|>user")[0])
    assert prompt.endswith("<|im_start|>assistant\ngreen<|im_end|>\n<|im_start|>user\nAnd the sky?<|im_end|>\n"
                           "<|im_start|>assistant\n")  # fmt: skip


def test_without_a_matching_chat_template_earlier_turns_come_first_as_lines(smollm2_chat):
    expected = "system: Answer in one word.\nuser: Colour of grass?\nassistant: green\n<image>\nAnd this one?"
    # No chat template (the tiny model) ...
    assert conversation_prompt("<image>\n{text}", HISTORY, "And this one?", None) == expected
    # ... or one of which the query template is not a user turn (an operator's own template).
    assert conversation_prompt("<image>\n{text}", HISTORY, "And this one?", smollm2_chat) == expected


def test_a_chat_template_that_refuses_the_turns_is_a_conversation_error():
    def strict(messages: list[dict[str, str]]) -> str:
        if len(messages) > 1:
            raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
        return f"USER: {messages[0]['content']} ASSISTANT:"

    with pytest.raises(ConversationError, match="must alternate"):
        conversation_prompt("USER: {text} ASSISTANT:", HISTORY, "hi", strict)
