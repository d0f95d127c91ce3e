"""A bank exported, wiped and imported serves the same answers; ``aim bank`` does it from the shell."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bank import DemonstrationBank, open_redis
from bank.transfer import export_bank, import_bank
from server import bank_cli
from tests.helpers import PrivateRedis, RunningApp, demo_record, png_b64


async def test_exported_wiped_imported_bank_serves_the_same_answers(app: RunningApp, tmp_path: Path):
    items = [{"image": png_b64(c, shape=s), "text": f"Q: what is it? A: a {c} {s}"}
             for c, s in [("red", "circle"), ("blue", "square"), ("green", "circle")]]  # fmt: skip
    r = await app.client.post("/demonstrations", json={"set": "moved", "items": items})
    assert r.status_code == 200, r.text
    query = {"query": {"image": png_b64("red", shape="square"), "text": "Q: what is it? A:"},
             "demonstrations": {"set": "moved", "k": 3}, "max_tokens": 8}  # fmt: skip
    before = (await app.client.post("/generate", json=query)).json()

    bank = app.state.bank
    await export_bank(bank.client, tmp_path / "export", [bank.fingerprint])
    async for key in bank.client.scan_iter(match=bank.prefix + "*"):
        await bank.client.delete(key)
    assert (await app.client.post("/generate", json=query)).status_code == 404
    await import_bank(bank.client, tmp_path / "export")

    after = (await app.client.post("/generate", json=query)).json()
    assert after["text"] == before["text"]
    assert after["demonstrations"] == before["demonstrations"]
    assert after["usage"] == before["usage"]


def test_aim_bank_exports_and_imports_from_the_shell(tmp_path: Path, monkeypatch, capsys):
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        monkeypatch.setenv("AIM_REDIS_URL", redis.url)

        async def put() -> None:
            connection = await open_redis(redis.url, tmp_path)
            await DemonstrationBank(connection.client, "c" * 16).put_many([demo_record(7)], set_name="s")
            await connection.close()

        asyncio.run(put())
        assert bank_cli.main(["export", str(tmp_path / "out")]) == 0
        assert "exported cccccccccccccccc: 1 demonstrations, 1 sets" in capsys.readouterr().out
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert manifest["fingerprints"] == {"c" * 16: {"demonstrations": 1, "sets": 1}}
        assert bank_cli.main(["import", str(tmp_path / "out")]) == 0
        assert "(0 new)" in capsys.readouterr().out
        assert bank_cli.main(["import", str(tmp_path / "nowhere")]) == 2
        assert "is not a bank export" in capsys.readouterr().err
        assert bank_cli.main(["export", str(tmp_path / "out2"), "--fingerprint", "d" * 16]) == 2
    finally:
        redis.kill()


@pytest.mark.parametrize("argv", [[], ["export"], ["frobnicate", "x"]])
def test_aim_bank_usage_errors(argv):
    with pytest.raises(SystemExit) as exc:
        bank_cli.main(argv)
    assert exc.value.code == 2
