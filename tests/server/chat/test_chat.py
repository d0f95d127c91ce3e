"""``/v1/chat/completions`` and ``/v1/models`` in-process, driven by the official ``openai`` client
(real tiny model, real Redis, transformers engine).

The core claim: a chat completion is ``/generate`` spoken in OpenAI's shapes. A one-message chat
builds ``/generate``'s prompt embeddings to the byte and answers the same greedy text; earlier turns
are placed by the model's chat rendering; everything OpenAI defines that would change the answer
is refused with 400 naming the field.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import torch

from server.chat.protocol import ChatCompletionRequest
from server.chat.serving import chat_request
from server.engines.base import EngineError, EngineOutput
from server.generate.protocol import GenerateRequest
from server.generate.serving import generate_request
from tests.helpers import RunningApp, make_settings, png_b64, start_app

MAX_TOKENS_LIMIT = 16
QUESTION = "Q: What color is the shape? A:"
COLORS = ["red", "blue", "green", "yellow"]


@pytest.fixture(scope="module")
async def chat_app(tiny_model_dir, module_data_dir) -> AsyncIterator[RunningApp]:
    settings = make_settings(tiny_model_dir, module_data_dir, max_tokens_limit=MAX_TOKENS_LIMIT)
    async for running in start_app(settings):
        r = await running.client.post(
            "/demonstrations",
            json={
                "set": "colours",
                "items": [{"image": png_b64(c), "text": f"{QUESTION} {c}"} for c in COLORS],
            },
        )
        assert r.status_code == 200, r.text
        yield running


@pytest.fixture(scope="module")
async def client(chat_app: RunningApp) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client, talking to the app in-process."""
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=chat_app.app), base_url="http://aim.test")
    async with openai.AsyncOpenAI(base_url="http://aim.test/v1", api_key="unused", http_client=http) as c:
        yield c


@pytest.fixture(scope="module")
async def model_id(client: openai.AsyncOpenAI) -> str:
    return (await client.models.list()).data[0].id


def data_url(color: str) -> str:
    return f"data:image/png;base64,{png_b64(color, shape='square')}"


def user_message(text: str, image: str | None = None) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image}}]
    return {"role": "user", "content": parts}


CASES = {
    "text": (QUESTION, None, None),
    "image": (QUESTION, "blue", None),
    "set and k": (QUESTION, "green", {"set": "colours", "k": 3}),
    "ids": ("Colour?", None, "ids"),
}


@pytest.mark.parametrize("case", CASES)
async def test_a_one_message_chat_is_generate_to_the_byte(chat_app, client, model_id, case):
    text, color, selection = CASES[case]
    if selection == "ids":
        selection = {"ids": (await chat_app.client.get("/sets/colours")).json()["ids"][::-1]}
    image = data_url(color) if color else None
    generate_body = {"query": {"text": text, **({"image": image} if image else {})}, "max_tokens": 8}
    chat_body = {"messages": [user_message(text, image)], "max_completion_tokens": 8, "temperature": 0}
    if selection:
        generate_body["demonstrations"] = chat_body["demonstrations"] = selection

    # The prompt embeddings the engine would read, to the byte.
    service = chat_app.state.generate
    via_generate = await service.prepare(generate_request(GenerateRequest.model_validate(generate_body)))
    via_chat = await service.prepare(chat_request(ChatCompletionRequest.model_validate(chat_body)))
    assert via_chat.prompt_embeds.dtype == via_generate.prompt_embeds.dtype
    assert torch.equal(via_chat.prompt_embeds, via_generate.prompt_embeds)
    assert via_chat.options == via_generate.options and via_chat.cost == via_generate.cost

    # And over HTTP, the official client gets /generate's greedy answer, demonstrations and usage.
    expected = (await chat_app.client.post("/generate", json=generate_body)).json()
    extra = {"demonstrations": selection} if selection else None
    completion = await client.chat.completions.create(
        model=model_id,
        messages=chat_body["messages"],
        max_completion_tokens=8,
        temperature=0,
        extra_body=extra,
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == model_id and completion.system_fingerprint == chat_app.state.fingerprint
    assert choice.message.role == "assistant" and choice.message.content == expected["text"]
    assert choice.finish_reason == expected["finish_reason"]
    assert completion.model_extra["demonstrations"] == expected["demonstrations"]
    usage, want = completion.usage, expected["usage"]
    assert (
        usage.prompt_tokens == want["prompt_tokens"] and usage.completion_tokens == want["completion_tokens"]
    )
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0  # the transformers engine has no prefix cache
    for field in ("fused_tokens", "query_tokens", "raw_multimodal_prompt_tokens"):
        assert usage.model_extra[field] == want[field]


async def test_earlier_turns_come_before_the_query(chat_app, client, model_id):
    """The tiny model has no chat template: earlier turns are 'role: text' lines before the query."""
    messages = [
        {"role": "system", "content": "Answer with a colour."},
        {"role": "user", "content": [{"type": "text", "text": "Grass?"}]},
        {"role": "assistant", "content": "green"},
        {"role": "user", "content": "Sky?"},
    ]
    completion = await client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=6, temperature=0
    )
    text = "system: Answer with a colour.\nuser: Grass?\nassistant: green\nSky?"
    expected = (
        await chat_app.client.post("/generate", json={"query": {"text": text}, "max_tokens": 6})
    ).json()
    assert completion.choices[0].message.content == expected["text"]
    assert completion.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
    # "developer" is OpenAI's newer name for the system turn.
    messages[0]["role"] = "developer"
    again = await client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=6, temperature=0
    )
    assert again.choices[0].message.content == expected["text"]


async def test_streaming_gives_the_same_text_then_usage_then_done(chat_app, client, model_id):
    messages = [user_message(QUESTION, data_url("red"))]
    extra = {"demonstrations": {"set": "colours", "k": 2}}
    whole = await client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=10, temperature=0, extra_body=extra
    )
    stream = await client.chat.completions.create(
        model=model_id,
        messages=messages,
        max_tokens=10,
        temperature=0,
        extra_body=extra,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    *_, last_choice, usage_chunk = chunks
    assert last_choice.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last_choice.model_extra["demonstrations"] == whole.model_extra["demonstrations"]
    assert usage_chunk.choices == [] and usage_chunk.usage.model_dump() == whole.usage.model_dump()

    # The wire itself: OpenAI's SSE framing, usage only when asked for, data: [DONE] last.
    body = {"messages": messages, "max_tokens": 4, "stream": True}
    async with chat_app.client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in r.aiter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in p for p in payloads)
    assert [p["choices"][0]["finish_reason"] for p in payloads][-1] in ("stop", "length")
    assert all(p["choices"][0]["finish_reason"] is None for p in payloads[:-1])


async def test_without_max_tokens_the_answer_may_run_to_the_servers_limit(client, model_id):
    completion = await client.chat.completions.create(
        model=model_id, messages=[user_message(QUESTION)], temperature=0
    )
    assert 1 <= completion.usage.completion_tokens <= MAX_TOKENS_LIMIT


async def test_harmless_openai_fields_are_accepted(client, model_id):
    completion = await client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": QUESTION, "name": "ann"}],
        max_tokens=2,
        n=1,
        user="ann",
        metadata={"k": "v"},
        store=False,
        tool_choice="none",
        response_format={"type": "text"},
        frequency_penalty=0,
        logprobs=False,
        seed=7,
        top_p=0.9,
        stop=["\n\n"],
    )
    assert completion.choices[0].finish_reason in ("stop", "length")


def _bad(messages=None, **fields) -> dict:
    return {"messages": messages or [user_message(QUESTION)], "max_tokens": 2, **fields}


BAD_REQUESTS = {
    "n > 1": (_bad(n=2), "n", "unsupported_value"),
    "tools": (
        _bad(tools=[{"type": "function", "function": {"name": "f"}}]),
        "tools",
        "unsupported_parameter",
    ),
    "logprobs": (_bad(logprobs=True, top_logprobs=2), "logprobs", "unsupported_parameter"),
    "json mode": (_bad(response_format={"type": "json_object"}), "response_format", "unsupported_parameter"),
    "penalty": (_bad(presence_penalty=0.5), "presence_penalty", "unsupported_parameter"),
    "unknown field": (_bad(best_of=3), "best_of", "invalid_value"),
    "http image": (
        _bad([user_message(QUESTION, "https://example.com/cat.png")]),
        "messages[0].content[1].image_url.url",
        "image_url_not_allowed",
    ),
    "file url": (
        _bad([user_message(QUESTION, "file:///etc/passwd")]),
        "messages[0].content[1].image_url.url",
        "invalid_image_url",
    ),
    "not an image": (
        _bad([user_message(QUESTION, "data:image/png;base64,AAAA")]),
        "messages[0].content[1].image_url.url",
        "invalid_image",
    ),
    "image in history": (
        _bad(
            [
                user_message("first", data_url("red")),
                {"role": "assistant", "content": "ok"},
                user_message("Q"),
            ]
        ),
        "messages[0].content[1]",
        "unsupported_value",
    ),
    "two images": (
        _bad(
            [
                {
                    "role": "user",
                    "content": [user_message("a", data_url("red"))["content"][1]] * 2
                    + [{"type": "text", "text": "b"}],
                }
            ]
        ),  # fmt: skip
        "messages[0].content[1]",
        "unsupported_value",
    ),
    "last is not the user's": (
        _bad([user_message("Q"), {"role": "assistant", "content": "A"}]),
        "messages[1].role",
        "invalid_value",
    ),
    "tool message": (
        _bad([{"role": "tool", "content": "x", "tool_call_id": "1"}, user_message("Q")]),
        "messages[0]",
        "invalid_value",
    ),
    "empty query": (_bad([user_message("  ")]), "messages[0].content", "empty_text"),
    "image placeholder": (_bad([user_message("a <image> b")]), "messages[0].content", "invalid_value"),
    "over the limit": (
        {"messages": [user_message(QUESTION)], "max_completion_tokens": MAX_TOKENS_LIMIT + 1},
        "max_completion_tokens",
        "max_tokens_too_large",
    ),
    "two limits": (_bad(max_completion_tokens=3), "max_tokens", "invalid_value"),
    "stream options alone": (_bad(stream_options={"include_usage": True}), "stream_options", "invalid_value"),
    "k too large": (_bad(demonstrations={"set": "colours", "k": 9}), "demonstrations.k", "k_exceeds_set"),
    "no messages": ({"messages": []}, "messages", "invalid_value"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
async def test_bad_requests_are_400_naming_the_field(client, model_id, case):
    body, param, code = BAD_REQUESTS[case]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/chat/completions", body={"model": model_id, **body}, cast_to=httpx.Response)
    error = caught.value
    assert error.status_code == 400 and error.param == param and error.code == code, error.body
    assert error.body["message"].startswith(f"{param}:")


async def test_n_above_one_is_refused_through_create(client, model_id):
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=model_id, messages=[user_message(QUESTION)], n=2)
    assert caught.value.param == "n" and "n=1" in caught.value.body["message"]


async def test_unknown_model_set_and_ids_are_404(client, model_id):
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=[user_message(QUESTION)])
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    for selection, param, code in [
        ({"set": "nope"}, "demonstrations.set", "set_not_found"),
        ({"ids": ["0" * 32]}, "demonstrations.ids", "demonstration_not_found"),
    ]:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model=model_id, messages=[user_message(QUESTION)], extra_body={"demonstrations": selection}
            )
        assert caught.value.param == param and caught.value.code == code


async def test_models_list_the_backbone_with_its_projector(chat_app, client, model_id):
    models = (await client.models.list()).data
    assert len(models) == 1
    card = models[0]
    encoder = chat_app.state.encoder
    assert card.id == f"{encoder.backbone.name}:{encoder.projector.digest()[:12]}" == model_id
    assert card.object == "model" and card.owned_by == "aim-serve"
    assert card.model_extra["root"] == encoder.backbone.name
    assert card.model_extra["max_model_len"] == chat_app.state.engine.max_model_len
    assert (await client.models.retrieve(model_id)).id == model_id
    assert (await client.models.retrieve(encoder.backbone.name)).id == model_id  # the name is an alias
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-4o")
    # The model's plain name works in requests too.
    completion = await client.chat.completions.create(
        model=encoder.backbone.name, messages=[user_message(QUESTION)], max_tokens=1
    )
    assert completion.model == model_id


async def test_an_engine_failure_after_the_stream_started_is_its_last_event(
    chat_app, client, model_id, monkeypatch
):
    """The status line is gone once a stream starts: the error comes as a last data event, and the
    official client raises it."""
    engine = chat_app.state.engine

    async def failing(prompt_embeds, options, request_id):
        yield EngineOutput(text="partial", token_ids=[1], finished=False)
        raise EngineError("the engine fell over")

    monkeypatch.setattr(engine, "generate", failing)
    stream = await client.chat.completions.create(
        model=model_id, messages=[user_message(QUESTION)], max_tokens=4, stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "partial"]
    assert caught.value.body["code"] == "internal_error"  # nothing of the engine's inner state leaks
