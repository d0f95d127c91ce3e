"""Field types shared by every wire module: checks that hold for any text or JSON entering the server.

JSON admits escapes that no encoder can write back (a lone surrogate such as ``"\\ud800"``). Such a
string would pass the request, then fail when hashed, tokenised or stored, as a 500 or, worse, as a
record that can never be read again. Every string field is checked here, where it enters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_JSON_DEPTH = 16


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a character that is not valid Unicode at position {exc.start}") from None
    return value


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    def walk(node: Any, depth: int) -> None:
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, str):
            _encodable(node)
        elif isinstance(node, dict):
            for key, item in node.items():
                _encodable(key)
                walk(item, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(value, 0)
    return value


Text = Annotated[str, AfterValidator(_encodable)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
SetName = Annotated[str, Field(pattern=SET_NAME_PATTERN)]
StopString = Annotated[Text, Field(min_length=1, max_length=256)]
# What both engines accept as a seed (vLLM and torch take a signed or unsigned 64-bit value).
MAX_SEED = 2**63 - 1


class DemonstrationSelection(BaseModel):
    """Either explicit ``ids`` (in prompt order) or ``k`` of a named ``set``: its first ``k``, or the ``k``
    most like the query's image (``select: similar``).

    The same object in every protocol that asks for generation (``/generate``'s ``demonstrations``,
    the extra ``demonstrations`` field of ``/v1/chat/completions``).
    """

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = None
    set: SetName | None = None
    k: int | None = Field(None, ge=0, description="how many of the set; default all")
    select: Literal["first", "similar"] = Field(
        "first",
        description="first: the set's first k in registration order; similar: the k whose images are "
        "closest to the query image, the most similar last (nearest the query)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DemonstrationSelection:
        if (self.ids is None) == (self.set is None):
            raise ValueError("give exactly one of 'ids' or 'set'")
        if self.k is not None and self.set is None:
            raise ValueError("'k' goes with 'set'")
        if self.select != "first" and self.set is None:
            raise ValueError("'select' goes with 'set'")
        return self

    @property
    def asks_for_any(self) -> bool:
        """Whether it can pick a demonstration at all (an empty set still picks none)."""
        return bool(self.ids) if self.ids is not None else self.k != 0
