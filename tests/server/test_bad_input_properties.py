"""Properties over the bad-input classes that once reached a 500: whatever text, metadata or sampling
value a client sends, the answer is a 200 or a 4xx in the envelope, and a refused registration writes
nothing. Inputs are generated (hypothesis), lone surrogates and extreme numbers included."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import RunningApp, bank_snapshot, png_b64

# Any characters, lone surrogates mixed in (hypothesis leaves them out by default; JSON can carry them
# as escapes, and they are what once reached a 500).
ANY_TEXT = st.text(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
IMAGE = png_b64("red")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def raw(body: dict) -> dict:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def assert_answered(r) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_any_text_and_metadata_is_stored_or_refused_cleanly(app: RunningApp):
    examples = []

    @given(text=ANY_TEXT, metadata=st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4))
    @SETTINGS
    def collect(text, metadata) -> None:  # hypothesis draws; the requests run on the test's event loop
        examples.append((text, metadata))

    collect()
    for text, metadata in examples:
        before = await bank_snapshot(app.state.bank.client, app.state.bank.prefix)
        r = await app.client.post(
            "/demonstrations", **raw({"items": [{"image": IMAGE, "text": text, "metadata": metadata}]})
        )
        assert_answered(r)
        if r.status_code != 200:
            assert await bank_snapshot(app.state.bank.client, app.state.bank.prefix) == before
        else:  # and what was stored can be read back
            assert (await app.client.get(f"/demonstrations/{r.json()['items'][0]['id']}")).status_code == 200


async def test_any_sampling_values_are_answered_or_refused_cleanly(app: RunningApp):
    examples = []

    @given(
        temperature=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70),
        top_p=st.floats(allow_nan=True, allow_infinity=True),
        seed=st.none() | st.integers(-(2**70), 2**70),
        stop=st.none() | ANY_TEXT | st.lists(ANY_TEXT, max_size=10),
        text=ANY_TEXT,
        stream=st.booleans(),
    )
    @SETTINGS
    def collect(**kwargs) -> None:
        examples.append(kwargs)

    collect()
    for e in examples:
        body = {"query": {"text": e["text"]}, "max_tokens": 2, "temperature": e["temperature"], "top_p": e["top_p"],
                "seed": e["seed"], "stop": e["stop"], "stream": e["stream"]}  # fmt: skip
        try:
            payload = json.dumps(body, allow_nan=True)
        except ValueError:
            continue
        r = await app.client.post(
            "/generate", content=payload.encode(), headers={"content-type": "application/json"}
        )
        assert_answered(r)
        if r.status_code == 200 and e["stream"]:
            assert r.text.rstrip().endswith("data: [DONE]")
