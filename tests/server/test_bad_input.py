"""Every kind of bad input gets a 4xx naming the field, in the one error envelope, and writes nothing."""

from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image

from tests.helpers import RunningApp, make_settings, png_b64, start_app

LIMITS = dict(
    max_image_bytes=3000,
    max_items_per_request=2,
    max_text_chars=60,
    max_metadata_bytes=64,
    max_model_len=40,
    max_demonstrations=3,
    max_tokens_limit=32,
)


def noise_png_b64(side: int = 120) -> str:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


GOOD = {"image": png_b64("red"), "text": "Q: colour? A: red"}
NOT_AN_IMAGE = base64.b64encode(b"GIF89a but not really an image at all").decode()


@pytest.fixture(scope="module")
async def limited(tiny_model_dir, tmp_path_factory):
    settings = make_settings(tiny_model_dir, tmp_path_factory.mktemp("limited"), **LIMITS)
    async for running in start_app(settings):
        r = await running.client.post(
            "/demonstrations",
            json={
                "set": "three",
                "items": [
                    {"image": png_b64(c), "text": f"Q: What colour is it? A: {c}"} for c in ("red", "blue")
                ],
            },
        )
        assert r.status_code == 200
        r = await running.client.post(
            "/demonstrations",
            json={
                "set": "three",
                "items": [{"image": png_b64("green"), "text": "Q: What colour is it? A: green"}],
            },
        )
        assert r.status_code == 200
        yield running


async def keys(app: RunningApp) -> set[bytes]:
    return set(await app.state.bank.client.keys(app.state.bank.prefix + "*"))


def assert_error(r, status: int, param: str | None, code: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code), error
    if param:
        assert param in error["message"] or param.split(".")[0] in error["message"]


REGISTER_CASES = [
    ({"items": [{"image": "!!not base64!!", "text": "x"}]}, 400, "items[0].image", "invalid_base64"),
    ({"items": [{"image": NOT_AN_IMAGE, "text": "x"}]}, 400, "items[0].image", "invalid_image"),
    (
        {"items": [{"image": "data:text/plain;base64," + GOOD["image"], "text": "x"}]},
        400,
        "items[0].image",
        "invalid_image",
    ),
    ({"items": [{"image": noise_png_b64(), "text": "x"}]}, 413, "items[0].image", "image_too_large"),
    ({"items": [{"image": GOOD["image"], "text": "   "}]}, 400, "items[0].text", "empty_text"),
    ({"items": [{"image": GOOD["image"], "text": "x" * 61}]}, 400, "items[0].text", "text_too_long"),
    ({"items": [GOOD, GOOD, GOOD]}, 400, "items", "too_many_items"),
    ({"items": [{**GOOD, "metadata": {"k": "v" * 80}}]}, 413, "items[0].metadata", "metadata_too_large"),
    ({"items": [{"image": GOOD["image"]}]}, 400, "items[0].text", "missing"),
    ({"items": [{"image": GOOD["image"], "text": 5}]}, 400, "items[0].text", "invalid_value"),
    ({"items": [{**GOOD, "colour": "red"}]}, 400, "items[0].colour", "invalid_value"),
    ({"items": []}, 400, "items", "invalid_value"),
    ({"set": "no spaces allowed", "items": [GOOD]}, 400, "set", "invalid_value"),
    # the first item is fine, the second is not: neither is written
    (
        {
            "set": "partial",
            "items": [{"image": png_b64("pink"), "text": "ok"}, {"image": NOT_AN_IMAGE, "text": "x"}],
        },
        400,
        "items[1].image",
        "invalid_image",
    ),
]


@pytest.mark.parametrize(("body", "status", "param", "code"), REGISTER_CASES)
async def test_bad_registration_is_refused_and_writes_nothing(limited: RunningApp, body, status, param, code):
    before = await keys(limited)
    assert_error(await limited.client.post("/demonstrations", json=body), status, param, code)
    assert await keys(limited) == before


async def test_malformed_json_body(limited: RunningApp):
    r = await limited.client.post(
        "/demonstrations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, None, "invalid_json")


QUERY = {"text": "Q: What colour is it? A:"}
GENERATE_CASES = [
    ({"demonstrations": {"ids": ["0" * 32]}}, 404, "demonstrations.ids", "demonstration_not_found"),
    ({"demonstrations": {"set": "missing"}}, 404, "demonstrations.set", "set_not_found"),
    ({"demonstrations": {"set": "three", "k": 4}}, 400, "demonstrations.k", "k_exceeds_set"),
    ({"demonstrations": {"set": "three", "k": -1}}, 400, "demonstrations.k", "invalid_value"),
    ({"demonstrations": {"set": "three", "ids": []}}, 400, "demonstrations", "invalid_value"),
    ({"demonstrations": {"ids": [], "k": 1}}, 400, "demonstrations", "invalid_value"),
    ({"demonstrations": {"ids": ["0" * 32] * 4}}, 400, "demonstrations.ids", "too_many_demonstrations"),
    ({"demonstrations": {"set": "three"}}, 400, "demonstrations", "context_length_exceeded"),
    ({"max_tokens": 30}, 400, "max_tokens", "context_length_exceeded"),
    ({"max_tokens": 33}, 400, "max_tokens", "max_tokens_too_large"),
    ({"max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ({"temperature": -1}, 400, "temperature", "invalid_value"),
    ({"top_p": 0}, 400, "top_p", "invalid_value"),
    ({"query": {"text": ""}}, 400, "query.text", "empty_text"),
    ({"query": {"text": "x", "image": "%%%"}}, 400, "query.image", "invalid_base64"),
    ({"query": {"text": "x", "image": NOT_AN_IMAGE}}, 400, "query.image", "invalid_image"),
    ({"query": {"image": png_b64("red")}}, 400, "query.text", "missing"),
    ({"stop": ["s"] * 9}, 400, None, "invalid_value"),
]


@pytest.mark.parametrize(("overrides", "status", "param", "code"), GENERATE_CASES)
async def test_bad_generate_request_is_refused(limited: RunningApp, overrides, status, param, code):
    body = {"query": QUERY, "max_tokens": 4, **overrides}
    assert_error(await limited.client.post("/generate", json=body), status, param, code)


async def test_the_limits_leave_room_for_a_good_request(limited: RunningApp):
    """The cases above fail for their stated reason, not because nothing fits."""
    r = await limited.client.post(
        "/generate", json={"query": QUERY, "demonstrations": {"set": "three", "k": 1}, "max_tokens": 4}
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] + 4 <= 40


@pytest.mark.parametrize(
    ("method", "path", "param", "code"),
    [
        ("GET", "/demonstrations/" + "0" * 32, "id", "demonstration_not_found"),
        ("DELETE", "/demonstrations/" + "0" * 32, "id", "demonstration_not_found"),
        ("GET", "/sets/missing", "name", "set_not_found"),
        ("DELETE", "/sets/missing", "name", "set_not_found"),
        ("GET", "/no-such-route", None, "http_404"),
    ],
)
async def test_unknown_things_are_404(limited: RunningApp, method, path, param, code):
    assert_error(await limited.client.request(method, path), 404, param, code)


# -- inputs that used to reach a 500 ------------------------------------------------------------------
def raw_json(body: dict) -> dict:
    """Keyword arguments for a request whose JSON keeps escapes (a lone surrogate) the way a client wrote
    them: httpx's ``json=`` would refuse to encode such a string."""
    import json

    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


SURROGATE = "\ud800"
UNENCODABLE_REGISTRATIONS = [
    ({"items": [{**GOOD, "text": f"Q: {SURROGATE}? A: red"}]}, "items[0].text"),
    ({"items": [{**GOOD, "metadata": {"note": SURROGATE}}]}, "items[0].metadata"),
    ({"items": [{**GOOD, "metadata": {SURROGATE: 1}}]}, "items[0].metadata"),
    ({"items": [{**GOOD, "metadata": {"deep": [{"x": SURROGATE}]}}]}, "items[0].metadata"),
]


@pytest.mark.parametrize(("body", "param"), UNENCODABLE_REGISTRATIONS)
async def test_text_that_cannot_be_encoded_is_refused_where_it_enters(limited: RunningApp, body, param):
    before = await keys(limited)
    r = await limited.client.post("/demonstrations", **raw_json(body))
    assert_error(r, 400, param, "invalid_value")
    assert "not valid Unicode" in r.json()["error"]["message"]
    assert await keys(limited) == before


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"query": {"text": f"x{SURROGATE}"}}, "query.text"),
        ({"stop": SURROGATE}, "stop"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"stop": ""}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_sampling_and_query_fields_out_of_range_are_400_even_when_streaming(
    limited: RunningApp, overrides, param, stream
):
    body = {"query": QUERY, "max_tokens": 4, "stream": stream, **overrides}
    r = await limited.client.post("/generate", **raw_json(body))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"].startswith(param), error
    assert error["code"] == "invalid_value"


async def test_a_temperature_too_small_to_divide_by_is_greedy(limited: RunningApp):
    answers = []
    for temperature in (0, 1e-300, 1e-6):
        r = await limited.client.post(
            "/generate", json={"query": QUERY, "max_tokens": 4, "temperature": temperature}
        )
        assert r.status_code == 200, r.text
        answers.append(r.json()["text"])
    assert answers[1] == answers[0] and answers[2] == answers[0]


async def test_405_names_the_allowed_methods(limited: RunningApp):
    r = await limited.client.put("/generate", json={})
    assert_error(r, 405, None, "http_405")
    assert r.headers["allow"] == "POST"


# -- bounded work -------------------------------------------------------------------------------------
def image_b64(size: tuple[int, int], fmt: str = "PNG", mode: str = "RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, "white" if mode != "1" else 1).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
async def tight(tiny_model_dir, tmp_path_factory):
    """Limits on the body and on a request's pixels, small enough to hit with tiny images."""
    settings = make_settings(
        tiny_model_dir, tmp_path_factory.mktemp("tight"), max_body_bytes=20_000, max_request_pixels=6_000
    )
    async for running in start_app(settings):
        yield running


async def test_a_declared_oversized_body_is_refused_without_reading_it(tight: RunningApp):
    async def never_sent():
        raise AssertionError("the server read a body it should have refused from its Content-Length")
        yield b""  # pragma: no cover

    r = await tight.client.post(
        "/demonstrations",
        content=never_sent(),
        headers={"content-type": "application/json", "content-length": str(2**31)},
    )
    assert_error(r, 413, None, "body_too_large")


async def test_a_streamed_body_is_refused_once_it_passes_the_limit(tight: RunningApp):
    sent = 0

    async def chunks():
        nonlocal sent
        for _ in range(1000):  # 1000 x 1 KiB, far past the 20,000-byte limit, with no Content-Length
            sent += 1024
            yield b" " * 1024

    before = await keys(tight)
    r = await tight.client.post(
        "/demonstrations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(r, 413, None, "body_too_large")
    assert sent < 1000 * 1024  # reading stopped at the limit, not at the end
    assert await keys(tight) == before


async def test_a_request_over_its_pixel_budget_is_refused_before_decoding(tight: RunningApp):
    before = await keys(tight)
    items = [{"image": image_b64((64, 64)), "text": f"item {i}"} for i in range(2)]  # 2 x 4096 > 6000
    r = await tight.client.post("/demonstrations", json={"items": items})
    assert_error(r, 413, "items[1].image", "images_too_large")
    assert await keys(tight) == before


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (image_b64((2000, 1), mode="1"), "more elongated than the limit"),  # a strip a resize would blow up
        (image_b64((8, 8), fmt="TGA"), "not a readable image (expected PNG, JPEG, GIF, WEBP, BMP, TIFF)"),
        (image_b64((8, 8), fmt="PCX"), "not a readable image"),
    ],
)
async def test_images_outside_the_documented_kinds_are_refused(tight: RunningApp, image, message):
    r = await tight.client.post("/generate", json={"query": {"text": "x", "image": image}, "max_tokens": 2})
    assert_error(r, 400, "query.image", "invalid_image")
    assert message in r.json()["error"]["message"]
