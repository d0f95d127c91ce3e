"""Field types shared by every wire module: checks that hold for any text or JSON entering the server.

JSON admits escapes that no encoder can write back (a lone surrogate such as ``"\\ud800"``). Such a
string would pass the request, then fail when hashed, tokenised or stored, as a 500 or, worse, as a
record that can never be read again. Every string field is checked here, where it enters.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

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
