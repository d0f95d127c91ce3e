"""The backbone adapter and the projector against the model's own computations."""

from pathlib import Path

import pytest
import torch

from projector.backbone import Backbone, BackboneError, load_backbone
from projector.encoder import AimEncoder
from projector.projector import Projector, ProjectorMismatchError
from tests.helpers import decode_png, png_b64

# Tokens a 64 x 64 image occupies in each tiny build's prompt: the real geometry of each architecture.
IMAGE_TOKENS_64PX = {
    "llava": 16,  # 64 px / patch 16: 4 x 4
    "llava_next": 24,  # base view 2 x 2 + a 2 x 2 grid of 2 x 2 tiles (4 x 4) + one newline per row (4)
    "llava_onevision": 24,  # the same any-resolution layout with SigLIP
    # 2 x 2 tiles and the global view, 4 tokens each after pixel shuffle, every view framed by
    # <fake_token_around_image> and a <row_i_col_j> / <global-img> marker, a newline after each row
    "idefics3": 4 * (1 + 1 + 4) + 2 + (1 + 1 + 1 + 4 + 1),
}


def test_query_embedding_reproduces_the_models_own_generate(any_backbone: Backbone):
    """Zero-shot: our spliced embeddings give exactly what the model's generate gives from pixels."""
    backbone = any_backbone
    image = decode_png(png_b64("green", (80, 60), "square"))
    text = "What shape is in the image?"
    inputs = backbone.processor(
        images=image, text=backbone.templates.query.format(text=text), return_tensors="pt"
    )
    expected = backbone.model.generate(**inputs, max_new_tokens=12, do_sample=False)[
        0, inputs["input_ids"].shape[1] :
    ]
    q = backbone.embed_query(image, text)
    embeds = torch.cat([q.prefix, q.body])[None]
    got = backbone.model.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
        max_new_tokens=12,
        do_sample=False,
    )[0]
    assert got.tolist() == expected.tolist()
    assert q.num_tokens == inputs["input_ids"].shape[1]
    # BOS goes before the demonstrations; Qwen2's tokenizer (LLaVA-OneVision) writes none
    assert q.prefix.shape[0] == (0 if backbone.model.config.model_type == "llava_onevision" else 1)


def test_demonstration_keeps_one_hidden_state_per_text_token(any_backbone: Backbone):
    backbone = any_backbone
    image = decode_png(png_b64("red"))
    text = "A red circle on a white background."
    enc = backbone.encode_demonstration(image, text)
    # the text is read ending with the separator that ends every demonstration in a prompt
    text_ids = backbone.tokenizer("\n" + text + "\n", add_special_tokens=False).input_ids
    image_tokens = IMAGE_TOKENS_64PX[backbone.model.config.model_type]
    assert enc.hidden_states.shape == (len(text_ids), backbone.hidden_size)
    assert enc.image_tokens == image_tokens
    assert enc.raw_tokens == image_tokens + len(text_ids)
    # the kept rows are the text's: the last layer at the prompt's last positions
    inputs = backbone.processor(
        images=image, text=backbone.templates.demonstration.format(text=text + "\n"), return_tensors="pt"
    )
    last = backbone.model.model(**inputs, output_hidden_states=True).hidden_states[-1][0]
    assert torch.equal(enc.hidden_states, last[-len(text_ids) :])
    # the hidden states saw the image: another image changes them
    other = backbone.encode_demonstration(decode_png(png_b64("blue")), text)
    assert not torch.allclose(enc.hidden_states, other.hidden_states)


def test_demonstration_text_gets_the_separator_once(backbone: Backbone):
    """A text registered without the trailing newline reads as training laid it out: "…a cat" and
    "…a cat\n" are the same demonstration, and raw ICL's interleaved prompt separates them too."""
    image = decode_png(png_b64("red"))
    bare = backbone.encode_demonstration(image, "Q: What is it? A: a cat").hidden_states
    ended = backbone.encode_demonstration(image, "Q: What is it? A: a cat\n").hidden_states
    assert bare.view(torch.uint8).numpy().tobytes() == ended.view(torch.uint8).numpy().tobytes()
    spaced = backbone.encode_demonstration(image, "Q: What is it? A: a cat ").hidden_states
    assert spaced.shape[0] == bare.shape[0]  # a trailing space is a separator already: nothing added
    demos = [(image, "Q: What is it? A: a cat"), (image, "Q: What is it? A: a dog")]
    raw = backbone.raw_prompt_embeds(demos, image, "Q: What is it? A:")
    expected = backbone.raw_prompt_embeds([(im, t + "\n") for im, t in demos], image, "Q: What is it? A:")
    assert torch.equal(torch.cat([raw.prefix, raw.body]), torch.cat([expected.prefix, expected.body]))


def test_encoding_is_deterministic(backbone: Backbone):
    image = decode_png(png_b64("red"))
    a = backbone.encode_demonstration(image, "same text").hidden_states
    b = backbone.encode_demonstration(image, "same text").hidden_states
    assert a.view(torch.uint8).numpy().tobytes() == b.view(torch.uint8).numpy().tobytes()


def test_identity_projector_passes_hidden_states_through(backbone: Backbone):
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size)
    image = decode_png(png_b64("red"))
    fused = AimEncoder(backbone, projector, dtype=torch.float32).encode_demonstration(image, "x y z")
    assert torch.equal(fused.fused_tokens, backbone.encode_demonstration(image, "x y z").hidden_states)


def test_an_untrained_residual_projector_gives_the_text_itself(backbone: Backbone):
    """kind residual = the text's input embeddings + a linear map of the hidden states, starting at 0:
    untrained, a demonstration's fused tokens are exactly its words; the training cache's lookup of
    those embeddings equals what the backbone's forward hands the decoder."""
    from projector.training.episodes import Pair
    from projector.training.features import FeatureCache

    image, text = decode_png(png_b64("red")), "Q: What colour? A: red"
    projector = Projector.identity(backbone=backbone.name, hidden_size=backbone.hidden_size, kind="residual")
    fused = AimEncoder(backbone, projector, dtype=torch.float32).encode_demonstration(image, text)
    encoding = backbone.encode_demonstration(image, text)
    ids = backbone.tokenizer(text + "\n", add_special_tokens=False)["input_ids"]  # with the separator
    words = backbone.model.get_input_embeddings()(torch.tensor(ids)).detach()
    assert torch.equal(fused.fused_tokens[-len(ids) :], words)
    assert torch.equal(encoding.text_embeds, fused.fused_tokens)
    pair = Pair(image, text)
    assert torch.equal(FeatureCache(backbone).demonstration_text(pair), encoding.text_embeds)
    with pytest.raises(ValueError, match="needs the text's input embeddings"):
        projector(encoding.hidden_states)


@pytest.mark.parametrize("kind", ["linear", "mlp", "residual"])
def test_projector_checkpoint_round_trip(tmp_path: Path, kind: str):
    p = Projector.identity(backbone="bb", hidden_size=8, kind=kind)
    with torch.no_grad():
        for param in p.parameters():
            param.add_(torch.randn_like(param))
    p.save(tmp_path / "ckpt")
    q = Projector.load(tmp_path / "ckpt", backbone="bb", hidden_size=8)
    x = (torch.randn(5, 8), torch.randn(5, 8)) if kind == "residual" else (torch.randn(5, 8),)
    assert torch.equal(p(*x), q(*x))
    assert p.digest() == q.digest()
    assert p.digest() != Projector.identity(backbone="bb", hidden_size=8, kind=kind).digest()


def test_projector_for_another_backbone_is_refused(tmp_path: Path):
    Projector.identity(backbone="llava-a", hidden_size=8).save(tmp_path / "ckpt")
    with pytest.raises(ProjectorMismatchError, match="made for backbone 'llava-a', not 'llava-b'"):
        Projector.load(tmp_path / "ckpt", backbone="llava-b", hidden_size=8)
    with pytest.raises(ProjectorMismatchError, match="hidden size 8, the backbone has 16"):
        Projector.load(tmp_path / "ckpt", backbone="llava-a", hidden_size=16)
    with pytest.raises(ProjectorMismatchError, match="not a projector checkpoint"):
        Projector.load(tmp_path, backbone="llava-a")


def test_query_capture_does_not_disturb_generation_on_another_thread(backbone: Backbone):
    """The engine runs the shared decoder while requests embed queries on other threads."""
    from concurrent.futures import ThreadPoolExecutor

    image = decode_png(png_b64("red"))
    q = backbone.embed_query(image, "What color?")
    embeds = torch.cat([q.prefix, q.body])[None]

    def run() -> list[int]:
        return backbone.model.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
        )[0].tolist()

    expected = run()
    with ThreadPoolExecutor(4) as pool:
        generations = [pool.submit(run) for _ in range(4)]
        captures = [pool.submit(backbone.embed_query, image, "What color?") for _ in range(8)]
        assert [g.result() for g in generations] == [expected] * 4
        assert all(torch.equal(c.result().body, q.body) for c in captures)


def test_an_untrained_projector_has_the_same_digest_at_every_start():
    from projector.projector import Projector

    for kind in ("linear", "mlp", "residual"):
        digests = {Projector.identity(backbone="b", hidden_size=8, kind=kind).digest() for _ in range(3)}
        assert len(digests) == 1, kind


@pytest.mark.parametrize("config_class", ["Qwen2VLConfig", "Qwen2_5_VLConfig"])
def test_multimodal_rope_models_are_refused_with_the_reason(tmp_path: Path, config_class: str):
    """Refused before any weights load, saying why (bench/qwen2_vl_mrope.py measures it)."""
    import transformers

    getattr(transformers, config_class)().save_pretrained(tmp_path)
    with pytest.raises(
        BackboneError, match=r"cannot serve: multimodal RoPE \(M-RoPE\) gives each image token"
    ):
        load_backbone(tmp_path)
