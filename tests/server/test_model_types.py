"""Every supported model type served end to end: the app on a tiny random build of each architecture,
the vLLM engine on its exported decoder, real Redis, driven over HTTP.

``llava`` (the ``tiny`` model) is served this way by the rest of the suite; here are the others. Each
answer must equal the transformers model's own greedy tokens: from pixels for a zero-shot query, and
from the same prompt embeddings for a few-shot one, so a wrong splice, a wrong decoder export or a
fused token at the wrong place changes the text.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

from projector.backbone import Backbone  # noqa: E402
from server.settings import MiB  # noqa: E402
from tests.helpers import RunningApp, decode_png, make_settings, png_b64, same_text, start_app  # noqa: E402

QUESTION = "Q: What color is the shape? A:"
COLORS = ["red", "blue"]


@pytest.fixture(scope="module", params=["llava_next", "llava_onevision", "idefics3"])
async def served_app(
    request: pytest.FixtureRequest,
    model_dir_of: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningApp]:
    settings = make_settings(
        model_dir_of(request.param),
        tmp_path_factory.mktemp(f"data-{request.param}"),
        engine="vllm",
        enforce_eager=True,
        kv_cache_memory_bytes=64 * MiB,
        max_model_len=1024,
        max_num_seqs=2,
    )
    async for running in start_app(settings):
        yield running


def reference_greedy(backbone: Backbone, max_new_tokens: int, **inputs: torch.Tensor) -> list[int]:
    """The transformers model's own greedy tokens, cut at its end-of-sequence token as the server does."""
    if "inputs_embeds" in inputs:
        inputs["attention_mask"] = torch.ones(inputs["inputs_embeds"].shape[:2], dtype=torch.long)
    out = backbone.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)[0]
    if "input_ids" in inputs:
        out = out[inputs["input_ids"].shape[1] :]
    eos = set(backbone.eos_token_ids)
    tokens = out.tolist()
    return next((tokens[:i] for i, t in enumerate(tokens) if t in eos), tokens)


async def test_served_on_vllm(served_app: RunningApp):
    ready = (await served_app.client.get("/ready")).json()
    assert ready["engine"] == "vllm"


async def test_zero_shot_answer_equals_the_models_own_generate(served_app: RunningApp):
    backbone = served_app.state.encoder.backbone
    image_b64 = png_b64("yellow", (90, 70), "square")
    r = await served_app.client.post(
        "/generate", json={"query": {"image": image_b64, "text": QUESTION}, "max_tokens": 12}
    )
    assert r.status_code == 200, r.text
    inputs = backbone.processor(
        images=decode_png(image_b64), text=backbone.templates.query.format(text=QUESTION), return_tensors="pt"
    )
    expected = reference_greedy(backbone, 12, **inputs)
    assert same_text(r.json()["text"], backbone, expected)
    assert r.json()["usage"]["completion_tokens"] == len(expected)
    assert r.json()["usage"]["query_tokens"] == inputs["input_ids"].shape[1]


async def test_few_shot_answer_equals_the_reference_on_the_same_prompt(served_app: RunningApp):
    backbone = served_app.state.encoder.backbone
    texts = [f"{QUESTION} {c}" for c in COLORS]
    items = [{"image": png_b64(c), "text": t} for c, t in zip(COLORS, texts, strict=True)]
    r = await served_app.client.post("/demonstrations", json={"set": "colours", "items": items})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    # one fused token per text token of the demonstration template ("<image>\n{text}"), the text ending
    # with the separator that the server adds when it is missing
    assert [i["fused_tokens"] for i in items] == [
        len(backbone.tokenizer("\n" + t + "\n", add_special_tokens=False).input_ids) for t in texts
    ]
    query = {"image": png_b64("green", shape="square"), "text": QUESTION}
    r = await served_app.client.post(
        "/generate", json={"query": query, "demonstrations": {"set": "colours", "k": 2}, "max_tokens": 12}
    )
    assert r.status_code == 200, r.text
    records = await served_app.state.bank.get_many([i["id"] for i in items])
    q = backbone.embed_query(decode_png(query["image"]), QUESTION)
    embeds = torch.cat([q.prefix, *(rec.fused_tokens for rec in records), q.body])
    expected = reference_greedy(backbone, 12, inputs_embeds=embeds[None])
    assert same_text(r.json()["text"], backbone, expected)
    assert r.json()["usage"]["prompt_tokens"] == embeds.shape[0]
    assert r.json()["usage"]["fused_tokens"] == sum(i["fused_tokens"] for i in items)
