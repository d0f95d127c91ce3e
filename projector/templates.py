"""How text is wrapped before it meets the tokenizer, and where a built model declares its own wrapping.

``<image>`` marks where the image goes, ``{text}`` the demonstration's or query's text. Templates are
part of a backbone's identity (they change the hidden states), so they enter the bank fingerprint.

A query that follows demonstrations may be wrapped differently from one that does not: a model may
declare a few-shot query template (``few_shot_query_template`` in its recipe), the layout its
projector was trained and measured in; without one, few-shot queries use the query templates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A model directory built by this project declares its name and templates in this file.
RECIPE_FILE = "aim_recipe.json"

DEFAULT_DEMONSTRATION_TEMPLATE = "<image>\n{text}"
DEFAULT_QUERY_TEMPLATE = "<image>\n{text}"
DEFAULT_TEXT_QUERY_TEMPLATE = "{text}"
# What separates one demonstration from the next (and the last from the query).
DEMONSTRATION_SEPARATOR = "\n"
# Where, in a few-shot query template, the demonstrations go (e.g. inside a chat's user turn);
# a template without it has them before its first token that is not BOS.
DEMONSTRATIONS_SLOT = "{demonstrations}"


def split_at_demonstrations(template: str) -> tuple[str, str]:
    """``(head, rest)``: the template's text before the demonstrations and the query's own part."""
    head, slot, rest = template.partition(DEMONSTRATIONS_SLOT)
    return (head, rest) if slot else ("", template)


def separated(text: str) -> str:
    """A demonstration's text as it enters a prompt: ending with the separator unless it already ends
    in whitespace. Training episodes are laid out this way, so a text registered without it ("…A: a
    cat") reads as the projector learnt, instead of running into the next demonstration's text."""
    return text if text.endswith(("\n", " ")) else text + DEMONSTRATION_SEPARATOR


@dataclass(frozen=True)
class Templates:
    demonstration: str = DEFAULT_DEMONSTRATION_TEMPLATE
    query: str = DEFAULT_QUERY_TEMPLATE  # a query with an image
    text_query: str = DEFAULT_TEXT_QUERY_TEMPLATE  # a query without one
    few_shot_query: str | None = None  # a query with an image after demonstrations; None: ``query``
    few_shot_text_query: str | None = None  # a query without one after demonstrations; None: ``text_query``

    def for_query(self, has_image: bool, few_shot: bool = False) -> str:
        if few_shot:
            chosen = self.few_shot_query if has_image else self.few_shot_text_query
            if chosen is not None:
                return chosen
        return self.query if has_image else self.text_query

    def demonstration_prompt(self, text: str) -> str:
        return self.demonstration.format(text=separated(text))

    def identity(self) -> list[str]:
        """What of the wrapping changes hidden states or prompts: part of the backbone's identity."""
        return [
            self.demonstration,
            self.query,
            self.text_query,
            self.for_query(True, few_shot=True),
            self.for_query(False, few_shot=True),
            f"separator={DEMONSTRATION_SEPARATOR!r}",
        ]


def read_recipe(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / RECIPE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def model_templates(recipe: dict[str, Any], **overrides: str | None) -> Templates:
    """The templates a model's recipe declares (or the defaults), with any non-None override applied.

    Overriding a query template without its few-shot counterpart serves every query, few-shot or
    not, with the override: an explicit wrapping is never silently replaced by the recipe's.
    """

    def few_shot(kind: str) -> str | None:
        if overrides.get(f"few_shot_{kind}"):
            return overrides[f"few_shot_{kind}"]
        return None if overrides.get(kind) else recipe.get(f"few_shot_{kind}_template")

    return Templates(
        demonstration=overrides.get("demonstration")
        or recipe.get("demonstration_template", DEFAULT_DEMONSTRATION_TEMPLATE),
        query=overrides.get("query") or recipe.get("query_template", DEFAULT_QUERY_TEMPLATE),
        text_query=overrides.get("text_query")
        or recipe.get("text_query_template", DEFAULT_TEXT_QUERY_TEMPLATE),
        few_shot_query=few_shot("query"),
        few_shot_text_query=few_shot("text_query"),
    )


class ConversationError(ValueError):
    """Earlier turns of a conversation that the model's chat template refuses to render."""


# Where the query goes while a chat template renders the conversation around it.
_QUERY_SLOT = "\x00aim-query-slot\x00"


def conversation_prompt(
    template: str,
    history: Sequence[tuple[str, str]],
    text: str,
    render_chat: Callable[[list[dict[str, str]]], str] | None = None,
) -> str:
    """The prompt text of a query that follows earlier turns (``(role, text)`` pairs) of a conversation.

    Without earlier turns it is ``template`` with the query's text, exactly what a single query gets,
    so a one-message conversation and a single query give the same prompt to the byte. With earlier
    turns and a chat template (``render_chat``: messages -> text, generation prompt added) of which
    ``template`` is one user turn (as aim-mini's query templates are SmolLM2's), the whole
    conversation goes through the chat template, the last user turn's content being the template's
    content for that turn: a system turn replaces the default one, earlier turns sit where the model
    expects them. Otherwise the earlier turns come first as ``role: text`` lines, then ``template``.
    """
    query = template.format(text=text)
    if not history:
        return query
    if render_chat is not None and (content := _user_turn_content(template, render_chat)) is not None:
        messages = [{"role": role, "content": turn} for role, turn in history]
        rendered = _render(render_chat, [*messages, {"role": "user", "content": _QUERY_SLOT}])
        if rendered.count(_QUERY_SLOT) == 1:
            before, _, after = rendered.partition(_QUERY_SLOT)
            return before + content.format(text=text) + after
    return "".join(f"{role}: {turn}\n" for role, turn in history) + query


def _user_turn_content(template: str, render_chat: Callable[[list[dict[str, str]]], str]) -> str | None:
    """What ``template`` puts inside a user turn of the chat template, if it is one such turn."""
    single = _render(render_chat, [{"role": "user", "content": _QUERY_SLOT}])
    head, slot, tail = single.partition(_QUERY_SLOT)
    if not slot or len(head) + len(tail) > len(template):
        return None
    if not (template.startswith(head) and template.endswith(tail)):
        return None
    content = template[len(head) : len(template) - len(tail)]
    return content if "{text}" in content else None


def _render(render_chat: Callable[[list[dict[str, str]]], str], messages: list[dict[str, str]]) -> str:
    try:
        return render_chat(messages)
    except Exception as exc:  # a Jinja template's raise_exception(), or any other refusal of the turns
        raise ConversationError(f"the model's chat template cannot render these messages: {exc}") from exc
