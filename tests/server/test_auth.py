"""API keys: Bearer authentication on every route but /health, and a server that will not open an
unauthenticated door on a reachable address."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.app import create_app
from server.auth import ApiKeyConfigError
from server.settings import Settings
from tests.helpers import RunningApp, make_settings, png_b64, start_app

ALICE, BOB, ADMIN = "alice-key-0123456789", "bob-key-0123456789ab", "admin-key-0123456789"


@pytest.fixture(scope="module")
async def keyed(tiny_model_dir, tmp_path_factory):
    settings = make_settings(
        tiny_model_dir,
        tmp_path_factory.mktemp("keyed"),
        api_keys=f"alice={ALICE},bob={BOB}",
        admin_api_key=ADMIN,
    )
    async for running in start_app(settings):
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ready"),
        ("GET", "/metrics"),
        ("GET", "/sets/any"),
        ("GET", "/demonstrations/" + "0" * 32),
        ("DELETE", "/sets/any"),
        ("POST", "/demonstrations"),
        ("POST", "/generate"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ],
)
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        (bearer("not-a-key-at-all-xx"), "invalid_api_key"),
        ({"Authorization": ALICE}, "missing_api_key"),
    ],
)
async def test_every_route_but_health_needs_a_valid_key(keyed: RunningApp, method, path, headers, code):
    r = await keyed.client.request(method, path, headers=headers, json={} if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == {
        "message": r.json()["error"]["message"],
        "type": "authentication_error",
        "param": "Authorization",
        "code": code,
    }
    assert ALICE not in r.text and BOB not in r.text


async def test_health_is_open_and_a_key_opens_the_rest(keyed: RunningApp):
    assert (await keyed.client.get("/health")).status_code == 200
    for key in (ALICE, BOB, ADMIN):
        assert (await keyed.client.get("/ready", headers=bearer(key))).status_code == 200
    r = await keyed.client.post(
        "/demonstrations",
        headers=bearer(ALICE),
        json={"items": [{"image": png_b64("red"), "text": "Q: colour? A: red"}]},
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "aim.example.com", "::"])
def test_a_reachable_address_without_keys_is_refused(host: str):
    with pytest.raises(ValidationError, match="AIM_API_KEYS"):
        Settings(host=host)
    Settings(host=host, allow_unauthenticated=True)  # the explicit opt-in
    Settings(host=host, api_keys=f"alice={ALICE}")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_keys(host: str):
    Settings(host=host)


@pytest.mark.parametrize(
    "keys",
    [
        "alice=short",
        "alice",
        f"al ice={ALICE}",
        f"alice={ALICE},alice={BOB}",
        f"alice={ALICE},bob={ALICE}",
        f"admin={ALICE}",
    ],
)
def test_unusable_keys_stop_the_server_at_start(keys: str):
    with pytest.raises(ApiKeyConfigError):
        create_app(Settings(api_keys=keys))


async def register_as(app: RunningApp, key: str, color: str, set_name: str) -> str:
    r = await app.client.post(
        "/demonstrations",
        headers=bearer(key),
        json={
            "set": set_name,
            "items": [
                {"image": png_b64(color), "text": f"Q: colour? A: {color}", "metadata": {"owner": key[:5]}}
            ],
        },
    )
    assert r.status_code == 200, r.text
    return r.json()["items"][0]["id"]


async def test_tenants_see_only_their_own_demonstrations_and_sets(keyed: RunningApp):
    alice_id = await register_as(keyed, ALICE, "green", "mine")
    # Bob cannot read, use, extend or delete Alice's demonstration or set: they do not exist for him.
    assert (await keyed.client.get(f"/demonstrations/{alice_id}", headers=bearer(BOB))).status_code == 404
    assert (await keyed.client.get("/sets/mine", headers=bearer(BOB))).status_code == 404
    assert (await keyed.client.delete(f"/demonstrations/{alice_id}", headers=bearer(BOB))).status_code == 404
    assert (await keyed.client.delete("/sets/mine", headers=bearer(BOB))).status_code == 404
    query = {"query": {"text": "Q: colour? A:"}, "max_tokens": 2}
    r = await keyed.client.post(
        "/generate", headers=bearer(BOB), json={**query, "demonstrations": {"ids": [alice_id]}}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "demonstration_not_found"
    r = await keyed.client.post(
        "/generate", headers=bearer(BOB), json={**query, "demonstrations": {"set": "mine"}}
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "set_not_found"
    # Chat completions go through the same tenant-scoped service.
    chat = {"messages": [{"role": "user", "content": "Q: colour? A:"}], "max_tokens": 2}
    for selection, code in [
        ({"ids": [alice_id]}, "demonstration_not_found"),
        ({"set": "mine"}, "set_not_found"),
    ]:
        r = await keyed.client.post(
            "/v1/chat/completions", headers=bearer(BOB), json={**chat, "demonstrations": selection}
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == code

    # The same content registered by Bob is his own record, in his own set of the same name.
    bob_id = await register_as(keyed, BOB, "green", "mine")
    assert bob_id == alice_id  # ids are content hashes ...
    alice_view = (await keyed.client.get(f"/demonstrations/{alice_id}", headers=bearer(ALICE))).json()
    bob_view = (await keyed.client.get(f"/demonstrations/{bob_id}", headers=bearer(BOB))).json()
    assert alice_view["metadata"] == {"owner": ALICE[:5]} and bob_view["metadata"] == {"owner": BOB[:5]}
    # ... and deleting his does not touch hers, even with her record in the shared LRU.
    assert (await keyed.client.delete(f"/demonstrations/{bob_id}", headers=bearer(BOB))).status_code == 200
    assert (await keyed.client.get(f"/demonstrations/{alice_id}", headers=bearer(ALICE))).status_code == 200
    assert (await keyed.client.get("/sets/mine", headers=bearer(ALICE))).json()["ids"] == [alice_id]
    r = await keyed.client.post(
        "/generate", headers=bearer(ALICE), json={**query, "demonstrations": {"set": "mine"}}
    )
    assert r.status_code == 200 and r.json()["demonstrations"] == [alice_id]
    r = await keyed.client.post(
        "/v1/chat/completions", headers=bearer(ALICE), json={**chat, "demonstrations": {"set": "mine"}}
    )
    assert r.status_code == 200 and r.json()["demonstrations"] == [alice_id]
    # The admin key works in the shared namespace, where neither tenant's set lives.
    assert (await keyed.client.get("/sets/mine", headers=bearer(ADMIN))).status_code == 404
