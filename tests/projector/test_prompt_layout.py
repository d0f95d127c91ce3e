"""The server, training and evaluation build the same AIM prompt, to the byte.

The same demonstrations and query go through (a) the server (registered over HTTP, then
``GenerateService.prepare``), (b) training (``episode_embeds`` without its target rows) and (c)
evaluation (the runner's ``encode_pool`` and ``aim_prompt``), all with the identity projector in
float32. Each is also checked against the layout written out here from the backbone's own outputs,
so a wrong layout in any one path, or in the shared one, fails.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch

from projector.backbone import Backbone
from projector.encoder import AimEncoder
from projector.evaluation.runner import Evaluator, aim_prompt, encode_pool
from projector.projector import Projector
from projector.templates import Templates
from projector.training.episodes import Episode, Pair, demo_text
from projector.training.features import FeatureCache
from projector.training.trainer import episode_embeds
from server.generate.protocol import GenerateRequest
from server.generate.serving import generate_request
from tests.helpers import make_settings, png_bytes, start_app

DEMONSTRATIONS = [("red", "circle"), ("blue", "square"), ("green", "circle")]
QUESTION = "Q: What color is the shape? A:"
QUERY = ("yellow", "square")


def _write_images(tmp_path: Path) -> tuple[list[tuple[Path, str]], Path]:
    demos = []
    for i, (color, shape) in enumerate(DEMONSTRATIONS):
        path = tmp_path / f"demo-{i}.png"
        path.write_bytes(png_bytes(color, shape=shape))
        demos.append((path, demo_text(QUESTION, color)))
    query = tmp_path / "query.png"
    query.write_bytes(png_bytes(QUERY[0], shape=QUERY[1]))
    return demos, query


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


async def server_prompt(
    tiny_model_dir: Path, tmp_path: Path, demos, query: Path, **settings: str
) -> torch.Tensor:
    prompts = await server_prompts(tiny_model_dir, tmp_path, demos, query, **settings)
    return prompts["few-shot"]


async def server_prompts(
    tiny_model_dir: Path, tmp_path: Path, demos, query: Path, **settings: str
) -> dict[str, torch.Tensor]:
    """The server's prompt embeddings for the query after ``demos``, and for it alone."""
    settings = make_settings(tiny_model_dir, tmp_path / "server", dtype="float32", **settings)
    async for app in start_app(settings):
        items = [{"image": _b64(path), "text": text} for path, text in demos]
        r = await app.client.post("/demonstrations", json={"items": items})
        assert r.status_code == 200, r.text
        ids = [item["id"] for item in r.json()["items"]]
        prompts = {}
        for name, demonstrations in [
            ("few-shot", {"ids": ids}),
            ("zero-shot", None),
            ("none picked", {"ids": []}),
        ]:
            request = GenerateRequest(
                query={"image": _b64(query), "text": QUESTION}, demonstrations=demonstrations, max_tokens=4
            )
            prompts[name] = (await app.state.generate.prepare(generate_request(request))).prompt_embeds
        return prompts
    raise AssertionError("the app did not start")


def training_prompt(backbone: Backbone, projector: Projector, demos, query: Path) -> torch.Tensor:
    episode = Episode(
        tuple(Pair(str(path), text) for path, text in demos), Pair(str(query), QUESTION), QUERY[0]
    )
    embeds, labels = episode_embeds(episode, projector, FeatureCache(backbone), backbone.device)
    targets = int((labels != -100).sum())
    assert targets > 0 and (labels[-targets:] != -100).all()
    return embeds[:-targets].detach()


def evaluation_prompt(backbone: Backbone, projector: Projector, demos, query: Path) -> torch.Tensor:
    evaluator = Evaluator(backbone)
    encoder = AimEncoder(backbone, projector, dtype=backbone.dtype)
    fused = encode_pool(encoder, [(evaluator.image(path), text) for path, text in demos])
    return aim_prompt(encoder, evaluator.image(query), QUESTION, fused)


async def test_server_training_and_evaluation_build_byte_identical_prompts(
    tiny_model_dir: Path, backbone: Backbone, tmp_path: Path
) -> None:
    assert backbone.dtype == torch.float32
    demos, query = _write_images(tmp_path)
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)

    prompts = {
        "server": await server_prompt(tiny_model_dir, tmp_path, demos, query),
        "training": training_prompt(backbone, projector, demos, query),
        "evaluation": evaluation_prompt(backbone, projector, demos, query),
    }

    # The layout, written out: query prefix (BOS), each demonstration's projected text-position
    # hidden states in order, then the query body with its image spliced in.
    with torch.inference_mode():
        image = Evaluator(backbone).image(query)
        q = backbone.embed_query(image, QUESTION)
        fused = [
            projector(backbone.encode_demonstration(Evaluator(backbone).image(path), text).hidden_states)
            for path, text in demos
        ]
    expected = torch.cat([q.prefix, *fused, q.body]).float().contiguous()
    assert q.prefix.shape[0] == 1 and all(f.shape[0] > 0 for f in fused)
    bos = backbone.model.get_input_embeddings().weight[backbone.tokenizer.bos_token_id]
    assert torch.equal(expected[0], bos)

    for name, prompt in prompts.items():
        assert prompt.dtype == torch.float32 and prompt.device.type == "cpu", name
        assert prompt.shape == expected.shape, (name, prompt.shape, expected.shape)
        assert torch.equal(prompt, expected), name
        assert prompt.contiguous().numpy().tobytes() == expected.numpy().tobytes(), name


INSTRUCTION = "Answer as the examples do.\n"


@pytest.mark.parametrize(
    ("few_shot", "in_prefix"),
    [
        (INSTRUCTION + "<image>\n{text}", False),  # demonstrations before the template (after BOS)
        (INSTRUCTION + "{demonstrations}<image>\n{text}", True),  # demonstrations at the slot
    ],
    ids=["before-template", "at-slot"],
)
async def test_a_few_shot_query_template_wraps_the_query_on_every_path(
    tiny_model_dir: Path, backbone: Backbone, tmp_path: Path, monkeypatch, few_shot: str, in_prefix: bool
) -> None:
    """A model that wraps queries after demonstrations differently (aim-mini: plain after
    demonstrations, its chat format alone) gets the few-shot wrapping from the server, training,
    evaluation and raw ICL alike, and the plain one for a query without demonstrations. With a
    ``{demonstrations}`` slot, the template's text before it opens the prompt, before the fused
    tokens in AIM and before the raw demonstrations in raw ICL."""
    monkeypatch.setattr(backbone, "templates", Templates(few_shot_query=few_shot))
    demos, query = _write_images(tmp_path)
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    served = await server_prompts(tiny_model_dir, tmp_path, demos, query, few_shot_query_template=few_shot)
    prompts = {
        "server": served["few-shot"],
        "training": training_prompt(backbone, projector, demos, query),
        "evaluation": evaluation_prompt(backbone, projector, demos, query),
    }
    with torch.inference_mode():
        image = Evaluator(backbone).image(query)
        wrapped = backbone.embed_query(image, QUESTION, few_shot=True)
        alone = backbone.embed_query(image, QUESTION)
        fused = [
            projector(backbone.encode_demonstration(Evaluator(backbone).image(path), text).hidden_states)
            for path, text in demos
        ]
        raw = backbone.raw_prompt_embeds(
            [(Evaluator(backbone).image(p), t) for p, t in demos], image, QUESTION
        )
    instruction = len(backbone.tokenizer(INSTRUCTION, add_special_tokens=False).input_ids)
    assert wrapped.prefix.shape[0] == alone.prefix.shape[0] + (instruction if in_prefix else 0)
    assert wrapped.body.shape[0] == alone.body.shape[0] + (0 if in_prefix else instruction)
    expected = torch.cat([wrapped.prefix, *fused, wrapped.body])
    for name, prompt in prompts.items():
        assert torch.equal(prompt, expected), name
    # raw ICL opens with the same prefix and ends with the same query
    raw_prompt = torch.cat([raw.prefix, raw.body])
    assert torch.equal(raw_prompt[: wrapped.prefix.shape[0]], wrapped.prefix)
    assert torch.equal(raw_prompt[-wrapped.body.shape[0] :], wrapped.body)
    assert torch.equal(served["zero-shot"], torch.cat([alone.prefix, alone.body]))
    assert torch.equal(served["none picked"], served["zero-shot"])  # no demonstration: a zero-shot query
