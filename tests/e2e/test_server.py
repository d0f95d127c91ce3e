"""End to end: ``aim serve`` as a process on the defaults (aim-mini; vLLM when installed), over HTTP.

This is the README's first command, driven as a new user would: real photos in, few-shot answers
with consistent usage out, and a clean shutdown on SIGTERM.
"""

from __future__ import annotations

import base64
import io
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from projector.training.scenes import shape_image
from tests.helpers import served

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "images"
START_TIMEOUT_S = 420


def photo(name: str) -> str:
    return base64.b64encode((PHOTOS / name).read_bytes()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    env = {
        "AIM_KV_CACHE_MEMORY_BYTES": str(256 * 1024 * 1024),  # holds one 4096-token aim-mini request
        "AIM_MAX_MODEL_LEN": "4096",
    }
    with served(tmp_path_factory.mktemp("e2e"), env, start_timeout=START_TIMEOUT_S) as running:
        yield running.base_url, running.process, running.log_path


def test_readme_flow_on_real_photos(server):
    base, _, _ = server
    with httpx.Client(base_url=base, timeout=120) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready").json()
        expected_engine = "vllm" if _vllm_installed() else "transformers"
        assert ready["engine"] == expected_engine and ready["model"] == "aim-mini"

        r = client.post(
            "/demonstrations",
            json={
                "set": "photos",
                "items": [
                    {"image": photo("cat.jpg"), "text": "Q: What is in the picture? A: a cat"},
                    {"image": photo("coffee.jpg"), "text": "Q: What is in the picture? A: a cup of coffee"},
                    {"image": photo("rocket.jpg"), "text": "Q: What is in the picture? A: a rocket"},
                ],
            },
        )
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [i["created"] for i in items] == [True, True, True]
        ids = [i["id"] for i in items]
        assert client.get("/sets/photos").json() == {
            "name": "photos",
            "ids": ids,
            "size": 3,
            "offset": 0,
            "limit": 10_000,
        }

        body = {
            "query": {"image": photo("astronaut.jpg"), "text": "Q: What is in the picture? A:"},
            "demonstrations": {"set": "photos", "k": 3},
            "max_tokens": 8,
        }
        first = client.post("/generate", json=body).json()
        usage = first["usage"]
        fused = sum(client.get(f"/demonstrations/{i}").json()["fused_tokens"] for i in ids)
        raw = sum(client.get(f"/demonstrations/{i}").json()["raw_tokens"] for i in ids)
        assert first["demonstrations"] == ids
        assert usage["fused_tokens"] == fused == sum(i["fused_tokens"] for i in items)
        assert usage["prompt_tokens"] == usage["fused_tokens"] + usage["query_tokens"]
        assert usage["raw_multimodal_prompt_tokens"] == usage["query_tokens"] + raw
        assert 1 <= usage["completion_tokens"] <= 8
        again = client.post("/generate", json=body).json()
        assert again["text"] == first["text"]  # greedy is deterministic

        r = client.post("/generate", json={**body, "stream": True})
        events = [e for e in r.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"

        metrics = client.get("/metrics").text
        assert "aim_generate_requests_total{finish_reason=" in metrics


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_aim_mini_answers_a_zero_shot_question_about_an_easy_vqa_image(server):
    """The default model is real: through the server it names the shape in easy-VQA test images."""
    pytest.importorskip("easy_vqa")
    from projector.models.aim_mini.data import load_split

    base, _, _ = server
    images = load_split("test")[:8]
    right = 0
    with httpx.Client(base_url=base, timeout=120) as client:
        for item in images:
            query = {
                "image": base64.b64encode(item.path.read_bytes()).decode(),
                "text": "What shape is in the image?",
            }
            r = client.post("/generate", json={"query": query, "max_tokens": 16})
            assert r.status_code == 200, r.text
            right += item.shape in r.json()["text"].lower()
    # 87.5 % zero-shot on held-out images when the connector was trained; 2 % with a random one
    assert right >= 5, f"{right} of {len(images)} right"


def test_aim_mini_names_what_is_in_photos_it_never_saw(server):
    """The default model sees photos: zero-shot, through the server, it names the main object of most
    of the held-out photos (examples/images/photos.json; none was used in training)."""
    from projector.models.aim_mini.photos import QUESTION, load_photos, names_object

    base, _, _ = server
    photos = load_photos(PHOTOS)
    answers = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        for p in photos:
            query = {"image": photo(p.file), "text": QUESTION}
            r = client.post("/generate", json={"query": query, "max_tokens": 24})
            assert r.status_code == 200, r.text
            answers[p.file] = r.json()["text"]
    named = [p.file for p in photos if names_object(answers[p.file], p.names)]
    # Most: 7 of the 10 as they are were named when measured (projector/models/aim_mini/README.md:
    # the two portraits by the face detector, five by a right ImageNet top class); the connector
    # before the caption named none. One miss of margin.
    assert len(named) >= 6, answers


def test_a_circle_query_gets_circle_demonstrations_with_select_similar(server):
    """Per-query selection on the real default model: unseen colours, the shape decides."""
    base, _, _ = server

    def shape(color: str, name: str) -> str:
        buf = io.BytesIO()
        shape_image((224, 224), color, name).save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()

    items = [{"image": shape(c, s), "text": f"Q: What shape is it? A: {s}"}
             for s in ("circle", "square", "triangle") for c in ("red", "blue", "green", "orange")]  # fmt: skip
    with httpx.Client(base_url=base, timeout=300) as client:
        r = client.post("/demonstrations", json={"set": "shapes", "items": items})
        assert r.status_code == 200, r.text
        shape_of = {it["id"]: items[i]["text"].rsplit(" ", 1)[1] for i, it in enumerate(r.json()["items"])}
        for color in ("yellow", "purple"):
            query = {"query": {"image": shape(color, "circle"), "text": "Q: What shape is it? A:"},
                     "demonstrations": {"set": "shapes", "k": 3, "select": "similar"}, "max_tokens": 4}  # fmt: skip
            r = client.post("/generate", json=query)
            assert r.status_code == 200, r.text
            assert [shape_of[i] for i in r.json()["demonstrations"]] == ["circle"] * 3


def test_sigterm_shuts_down_cleanly(server):
    _, proc, log = server
    proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once its graceful shutdown is complete, so -SIGTERM is a clean exit
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "Application shutdown complete" in text
    assert "Traceback" not in text and "Redis shutdown failed" not in text
