"""End to end: the official ``openai`` client against ``aim serve`` processes on the tiny model, on both
engines (the vLLM one marked ``vllm``).

What a user of vLLM's OpenAI server would do, unchanged: ``chat.completions.create`` plain, with an
image data URL, with demonstrations through ``extra_body``, streamed with usage; each greedy answer must
equal ``/generate``'s for the same inputs, on the same server.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import ServerProcess, png_b64, served

QUESTION = "Q: What color is the shape? A:"
COLORS = ["red", "blue", "green"]
ENGINES = [
    pytest.param("transformers", id="transformers"),
    pytest.param(
        "vllm",
        id="vllm",
        marks=[
            pytest.mark.vllm,
            pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
        ],
    ),
]


@pytest.fixture(scope="module", params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {"AIM_MODEL": "tiny", "AIM_ENGINE": request.param, "AIM_MAX_TOKENS_LIMIT": "32"}
    if request.param == "vllm":
        env["AIM_KV_CACHE_MEMORY_BYTES"] = str(256 * 1024 * 1024)
    with served(tmp_path_factory.mktemp(f"openai-{request.param}"), env, start_timeout=300) as running:
        r = httpx.post(
            running.base_url + "/demonstrations",
            json={
                "set": "colours",
                "items": [{"image": png_b64(c), "text": f"{QUESTION} {c}"} for c in COLORS],
            },
            timeout=60,
        )
        assert r.status_code == 200, r.text
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", timeout=120, max_retries=0) as c:
        yield c


def generate(server: ServerProcess, text: str, image: str | None = None, demonstrations=None) -> dict:
    body: dict = {"query": {"text": text}, "max_tokens": 12}
    if image:
        body["query"]["image"] = image
    if demonstrations:
        body["demonstrations"] = demonstrations
    r = httpx.post(server.base_url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def image_url(color: str) -> str:
    return f"data:image/png;base64,{png_b64(color, shape='square')}"


def with_image(text: str, url: str) -> list[dict]:
    return [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]


@pytest.mark.parametrize(
    ("image", "demonstrations"),
    [(None, None), ("yellow", None), ("yellow", {"set": "colours", "k": 2})],
    ids=["plain", "image", "demonstrations"],
)
def test_create_answers_what_generate_answers(server, client, image, demonstrations):
    model = client.models.list().data[0].id
    url = image_url(image) if image else None
    content = with_image(QUESTION, url) if url else QUESTION
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=12,
        temperature=0,
        extra_body={"demonstrations": demonstrations} if demonstrations else None,
    )
    expected = generate(server, QUESTION, url, demonstrations)
    assert completion.choices[0].message.content == expected["text"]
    assert completion.choices[0].finish_reason == expected["finish_reason"]
    assert completion.model_extra["demonstrations"] == expected["demonstrations"]
    assert len(expected["demonstrations"]) == (demonstrations or {}).get("k", 0)
    usage = completion.usage
    assert usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert usage.completion_tokens == expected["usage"]["completion_tokens"]
    assert usage.model_extra["fused_tokens"] == expected["usage"]["fused_tokens"]


def test_stream_with_usage(server, client):
    messages = [{"role": "user", "content": with_image(QUESTION, image_url("blue"))}]
    demonstrations = {"set": "colours", "k": 3}
    expected = generate(server, QUESTION, image_url("blue"), demonstrations)
    stream = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"demonstrations": demonstrations},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected["text"]
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == [expected["finish_reason"]]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Whole KV blocks of the same prompt, sent before by /generate, may come from vLLM's prefix cache
    # (none on CPU, whose 128-token blocks are longer than this prompt; tests/server/engines/ has hits).
    assert 0 <= usage.prompt_tokens_details.cached_tokens <= usage.prompt_tokens


def test_errors_in_openais_exceptions(client):
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], n=2)
    assert caught.value.param == "n" and caught.value.code == "unsupported_value"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": with_image(QUESTION, "http://example.com/cat.png")}],
        )
    assert caught.value.param == "messages[0].content[1].image_url.url"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"demonstrations": {"set": "missing"}},
        )
    assert caught.value.code == "set_not_found"
