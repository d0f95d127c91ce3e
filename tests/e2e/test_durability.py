"""kill -9 of the server while registrations are in flight: every acknowledged one is there after a
restart on the same data directory (the embedded Redis fsyncs before acknowledging, dies with the
server, and the next server waits for it to let go of the directory)."""

from __future__ import annotations

import threading
import time

import httpx

from tests.helpers import png_b64, served

TINY = {"AIM_MODEL": "tiny", "AIM_ENGINE": "transformers"}


def test_no_acknowledged_registration_is_lost_when_the_server_is_killed(tmp_path):
    acknowledged: list[str] = []
    stop = threading.Event()

    def register_forever(base_url: str, worker: int) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                item = {"image": png_b64(size=(32, 20 + (i % 40)), color=["red", "blue"][worker]),
                        "text": f"worker {worker} item {i}"}  # fmt: skip
                try:
                    r = client.post("/demonstrations", json={"set": f"w{worker}", "items": [item]})
                except httpx.HTTPError:
                    return  # the server is gone: this request was never acknowledged
                if r.status_code == 200:
                    acknowledged.append(r.json()["items"][0]["id"])

    with served(tmp_path, TINY, start_timeout=180) as server:
        workers = [threading.Thread(target=register_forever, args=(server.base_url, w)) for w in range(2)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.process.kill()  # SIGKILL, mid-request
        server.process.wait()
        stop.set()
        for w in workers:
            w.join()
    assert len(acknowledged) >= 20

    with (
        served(tmp_path, TINY, start_timeout=180) as server,
        httpx.Client(base_url=server.base_url) as client,
    ):
        missing = [i for i in acknowledged if client.get(f"/demonstrations/{i}").status_code != 200]
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged registrations lost"
