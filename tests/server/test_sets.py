"""Sets as a user pages through them and extends them: GET /sets, GET /sets/{name}?offset&limit,
POST /sets/{name}/items (known demonstrations join by id, nothing re-encoded)."""

from __future__ import annotations

import pytest

from tests.helpers import RunningApp, bank_snapshot, count_calls, png_b64


async def register(app: RunningApp, colors: list[str], set_name: str | None = None) -> list[str]:
    body = {"items": [{"image": png_b64(c), "text": f"Q: colour? A: {c}"} for c in colors]}
    if set_name:
        body["set"] = set_name
    r = await app.client.post("/demonstrations", json=body)
    assert r.status_code == 200, r.text
    return [it["id"] for it in r.json()["items"]]


async def test_sets_are_listed_with_sizes_a_page_at_a_time(app: RunningApp):
    for i, name in enumerate(["list-c", "list-a", "list-b"]):
        await register(app, ["red", "blue", "green"][: i + 1], name)
    r = await app.client.get("/sets", params={"limit": 1000})
    listed = {s["name"]: s["size"] for s in r.json()["sets"]}
    assert {k: v for k, v in listed.items() if k.startswith("list-")} == {
        "list-a": 2,
        "list-b": 3,
        "list-c": 1,
    }
    names = [s["name"] for s in r.json()["sets"]]
    assert names == sorted(names)
    total = r.json()["total"]
    pages = [
        (await app.client.get("/sets", params={"offset": o, "limit": 2})).json() for o in range(0, total, 2)
    ]
    assert [s["name"] for p in pages for s in p["sets"]] == names
    assert all(p["total"] == total and p["limit"] == 2 for p in pages)


async def test_a_set_is_read_a_page_at_a_time(app: RunningApp):
    ids = await register(app, ["red", "blue", "green", "yellow", "purple"], "paged")
    whole = (await app.client.get("/sets/paged")).json()
    assert whole == {"name": "paged", "ids": ids, "size": 5, "offset": 0, "limit": 10_000}
    page = (await app.client.get("/sets/paged", params={"offset": 1, "limit": 3})).json()
    assert page["ids"] == ids[1:4] and page["size"] == 5
    past = (await app.client.get("/sets/paged", params={"offset": 7, "limit": 3})).json()
    assert past["ids"] == [] and past["size"] == 5


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/sets", {"limit": 0}, "limit"),
        ("/sets", {"offset": -1}, "offset"),
        ("/sets/x", {"limit": 10_001}, "limit"),
    ],
)
async def test_page_bounds_are_400_naming_the_parameter(app: RunningApp, path, params, param):
    r = await app.client.get(path, params=params)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


async def test_known_demonstrations_join_a_set_by_id_without_encoding(app: RunningApp, monkeypatch):
    ids = await register(app, ["pink", "brown", "gray"])
    encodes = count_calls(monkeypatch, app.state.encoder, "encode_demonstrations")
    r = await app.client.post("/sets/by-id/items", json={"ids": [ids[2], ids[0]]})
    assert r.status_code == 200 and r.json() == {"name": "by-id", "size": 2}
    r = await app.client.post("/sets/by-id/items", json={"ids": [ids[0], ids[1]]})  # a member stays put
    assert r.json()["size"] == 3
    assert (await app.client.get("/sets/by-id")).json()["ids"] == [ids[2], ids[0], ids[1]]
    assert encodes == []


async def test_an_unknown_id_adds_nothing_and_is_named(app: RunningApp):
    ids = await register(app, ["teal"], "guarded")
    before = await bank_snapshot(app.state.bank.client, app.state.bank.prefix)
    r = await app.client.post("/sets/guarded/items", json={"ids": [ids[0], "f" * 32]})
    assert r.status_code == 404, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("ids[1]", "demonstration_not_found")
    assert await bank_snapshot(app.state.bank.client, app.state.bank.prefix) == before


@pytest.mark.parametrize(("name", "body"), [("bad name", {"ids": ["a"]}), ("ok", {"ids": []}), ("ok", {})])
async def test_bad_additions_are_400(app: RunningApp, name, body):
    r = await app.client.post(f"/sets/{name}/items", json=body)
    assert r.status_code == 400, r.text
