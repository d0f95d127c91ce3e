"""The bank fails and comes back: 503 while it is gone (never 500), healed without a restart of the
server, nothing acknowledged lost, and an embedded Redis that neither outlives the server nor stays dead.

These tests stop and kill Redis servers, so each starts its own: never the shared one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import PrivateRedis, RunningApp, make_settings, png_b64, start_app

RECOVERY_SECONDS = 5.0


def items(n: int, offset: int = 0) -> list[dict]:
    return [{"image": png_b64(size=(32, 32 + i + offset)), "text": f"Q: which? A: number {i + offset}"}
            for i in range(n)]  # fmt: skip


async def register(app: RunningApp, n: int, offset: int = 0) -> list[str]:
    r = await app.client.post("/demonstrations", json={"set": "kept", "items": items(n, offset)})
    assert r.status_code == 200, r.text
    return [it["id"] for it in r.json()["items"]]


async def wait_until_200(app: RunningApp, path: str) -> float:
    started = time.monotonic()
    while True:
        r = await app.client.get(path)
        assert r.status_code in (200, 503), r.text  # while healing: 503, never 500
        if r.status_code == 200:
            return time.monotonic() - started
        assert time.monotonic() - started < RECOVERY_SECONDS, f"{path} still {r.status_code}: {r.text}"
        await asyncio.sleep(0.05)


def assert_bank_unreachable(r) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "bank_unreachable"
    assert r.headers["retry-after"] == "1"


@pytest.fixture
async def external(tiny_model_dir, tmp_path):
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        async for app in start_app(make_settings(tiny_model_dir, tmp_path / "data", redis_url=redis.url)):
            yield app, redis
    finally:
        if redis.process is not None and redis.process.poll() is None:
            redis.kill()


async def test_redis_down_is_503_everywhere_and_heals_with_nothing_lost(external):
    app, redis = external
    ids = await register(app, 3)
    query = {"query": {"text": "Q: which? A:"}, "demonstrations": {"ids": ids}, "max_tokens": 2}
    assert (await app.client.post("/generate", json=query)).status_code == 200  # fused tokens now in the LRU

    redis.kill()
    requests = [
        ("GET", f"/demonstrations/{ids[0]}", None),
        ("DELETE", f"/demonstrations/{ids[0]}", None),
        ("GET", "/sets/kept", None),
        ("DELETE", "/sets/kept", None),
        ("POST", "/demonstrations", {"items": items(1, offset=50)}),
        ("POST", "/generate", query),  # its demonstrations are cached, but the existence check is not
        ("POST", "/generate", {**query, "demonstrations": {"set": "kept", "k": 2}}),
    ]
    for method, path, body in requests:
        assert_bank_unreachable(await app.client.request(method, path, json=body))
    assert (await app.client.get("/ready")).json()["error"]["code"] == "bank_unreachable"
    assert (await app.client.get("/health")).status_code == 200

    redis.start()  # the same directory: it reloads its append-only file
    assert await wait_until_200(app, "/sets/kept") < RECOVERY_SECONDS
    assert (await app.client.get("/sets/kept")).json()["ids"] == ids  # nothing acknowledged was lost
    for _ in range(20):  # and no stale pooled connection surfaces later as a 500
        for path in [f"/demonstrations/{i}" for i in ids] + ["/sets/kept", "/ready"]:
            assert (await app.client.get(path)).status_code == 200
        assert (await app.client.post("/generate", json=query)).status_code == 200


async def test_a_killed_embedded_redis_is_restarted_from_its_append_only_file(tiny_model_dir, tmp_path):
    async for app in start_app(make_settings(tiny_model_dir, tmp_path / "data")):
        ids = await register(app, 4)
        embedded = app.state.redis.embedded
        old_pid = embedded.pid
        os.kill(old_pid, signal.SIGKILL)
        took = await wait_until_200(app, "/sets/kept")
        assert embedded.pid != old_pid and embedded.restarts == 1
        assert (await app.client.get("/sets/kept")).json()["ids"] == ids
        for i in ids:
            assert (await app.client.get(f"/demonstrations/{i}")).status_code == 200
        assert (await app.client.get("/ready")).status_code == 200
        assert took < RECOVERY_SECONDS


def test_the_embedded_redis_dies_with_a_killed_server(tmp_path):
    script = (
        "import asyncio, sys\n"
        "from bank.embedded import EmbeddedRedis\n"
        "async def main():\n"
        f"    r = EmbeddedRedis({str(tmp_path)!r})\n"
        "    await r.start()\n"
        "    print(r.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    redis_pid = int(parent.stdout.readline())
    os.kill(redis_pid, 0)  # alive
    parent.kill()  # kill -9: no clean-up code runs in the parent
    parent.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            os.kill(redis_pid, 0)
        except ProcessLookupError:
            return
        # A zombie of a reaped parent is re-parented and reaped by init; a live server would stay.
        with open(f"/proc/{redis_pid}/stat") as f:
            if f.read().split()[2] == "Z":
                return
        assert time.monotonic() < deadline, "the embedded redis-server outlived the killed server"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        (("--appendfsync", "everysec"), True),
        (("--appendonly", "no"), True),
        (("--appendfsync", "always"), False),
    ],
)
async def test_durable_writes_need_a_redis_that_can_promise_them(tmp_path, extra, refused):
    from bank import open_redis

    redis = PrivateRedis(tmp_path / "redis", *extra)
    redis.start()
    try:
        if refused:
            with pytest.raises(RuntimeError, match="appendfsync always"):
                await open_redis(redis.url, tmp_path / "unused", durable_writes=True)
        else:  # this Redis (6.2) fsyncs before it answers: no WAITAOF needed, none sent
            connection = await open_redis(redis.url, tmp_path / "unused", durable_writes=True)
            assert connection.wait_for_fsync is False
            await connection.close()
        connection = await open_redis(redis.url, tmp_path / "unused")  # not asked for: any Redis will do
        await connection.close()
    finally:
        redis.kill()


async def test_one_data_directory_serves_one_embedded_redis(tmp_path):
    from bank.embedded import EmbeddedRedis

    first = EmbeddedRedis(tmp_path)
    await first.start()
    try:
        second = EmbeddedRedis(tmp_path)
        with pytest.raises(RuntimeError, match="another aim-serve"):
            await second._lock_data_dir(timeout=0.3)
    finally:
        first.stop()
    third = EmbeddedRedis(tmp_path)  # free once the first is stopped
    await third.start()
    third.stop()


async def test_the_embedded_redis_exits_on_sigterm_even_without_its_directory(tmp_path):
    """What the kernel sends when the server dies; the directory may already be gone (a temporary one)."""
    import shutil

    from bank.embedded import EmbeddedRedis

    embedded = EmbeddedRedis(tmp_path / "data")
    await embedded.start()
    try:
        shutil.rmtree(tmp_path / "data")
        os.kill(embedded.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while embedded.running:
            assert time.monotonic() < deadline, "redis-server ignored SIGTERM"
            await asyncio.sleep(0.05)
    finally:
        if embedded.running:  # the failure this test is about: do not leave the server behind
            os.kill(embedded.pid, signal.SIGKILL)
        embedded.stop()
