"""``"select": "similar"`` through /generate: the chosen demonstrations, their order and the errors."""

from __future__ import annotations

import pytest

from tests.helpers import RunningApp, png_b64


async def test_similar_picks_k_of_the_set_deterministically(app: RunningApp):
    items = [{"image": png_b64(c, shape=s), "text": f"Q: what? A: {c} {s}"}
             for c in ("red", "blue", "green") for s in ("circle", "square")]  # fmt: skip
    r = await app.client.post("/demonstrations", json={"set": "sel", "items": items})
    ids = [it["id"] for it in r.json()["items"]]
    query = {"query": {"image": png_b64("red", shape="circle"), "text": "Q: what? A:"}, "max_tokens": 2,
             "demonstrations": {"set": "sel", "k": 3, "select": "similar"}}  # fmt: skip
    first = (await app.client.post("/generate", json=query)).json()
    assert len(first["demonstrations"]) == 3 and set(first["demonstrations"]) <= set(ids)
    # The query's own image is in the set: it is the most similar, so it comes last.
    assert first["demonstrations"][-1] == ids[0]
    again = (await app.client.post("/generate", json=query)).json()
    assert again["demonstrations"] == first["demonstrations"]
    whole = (
        await app.client.post(
            "/generate", json={**query, "demonstrations": {"set": "sel", "select": "similar"}}
        )
    ).json()
    assert sorted(whole["demonstrations"]) == sorted(ids) and whole["demonstrations"][-1] == ids[0]


@pytest.mark.parametrize(
    ("query", "demonstrations", "param", "code"),
    [
        (
            {"text": "Q: what? A:"},
            {"set": "sel", "k": 1, "select": "similar"},
            "demonstrations.select",
            "select_needs_image",
        ),
        (
            {"text": "x", "image": png_b64()},
            {"ids": ["0" * 32], "select": "similar"},
            "demonstrations",
            "invalid_value",
        ),
        (
            {"text": "x", "image": png_b64()},
            {"set": "sel", "select": "closest"},
            "demonstrations.select",
            "invalid_value",
        ),
    ],
)
async def test_similar_selection_errors_name_the_field(app: RunningApp, query, demonstrations, param, code):
    r = await app.client.post(
        "/generate", json={"query": query, "demonstrations": demonstrations, "max_tokens": 2}
    )
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)
