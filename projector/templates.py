"""How text is wrapped before it meets the tokenizer, and where a built model declares its own wrapping.

``<image>`` marks where the image goes, ``{text}`` the demonstration's or query's text. Templates are
part of a backbone's identity (they change the hidden states), so they enter the bank fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A model directory built by this project declares its name and templates in this file.
RECIPE_FILE = "aim_recipe.json"

DEFAULT_DEMONSTRATION_TEMPLATE = "<image>\n{text}"
DEFAULT_QUERY_TEMPLATE = "<image>\n{text}"
DEFAULT_TEXT_QUERY_TEMPLATE = "{text}"


@dataclass(frozen=True)
class Templates:
    demonstration: str = DEFAULT_DEMONSTRATION_TEMPLATE
    query: str = DEFAULT_QUERY_TEMPLATE  # a query with an image
    text_query: str = DEFAULT_TEXT_QUERY_TEMPLATE  # a query without one

    def for_query(self, has_image: bool) -> str:
        return self.query if has_image else self.text_query


def read_recipe(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / RECIPE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def model_templates(recipe: dict[str, Any], **overrides: str | None) -> Templates:
    """The templates a model's recipe declares (or the defaults), with any non-None override applied."""
    return Templates(
        demonstration=overrides.get("demonstration")
        or recipe.get("demonstration_template", DEFAULT_DEMONSTRATION_TEMPLATE),
        query=overrides.get("query") or recipe.get("query_template", DEFAULT_QUERY_TEMPLATE),
        text_query=overrides.get("text_query")
        or recipe.get("text_query_template", DEFAULT_TEXT_QUERY_TEMPLATE),
    )
