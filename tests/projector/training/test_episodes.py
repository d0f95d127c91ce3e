"""Training data: episode JSONL in both layouts, the interleaved web-document readers, the text layout."""

from __future__ import annotations

import json
from pathlib import Path

from projector.training.episodes import (
    Episode,
    Pair,
    demo_text,
    document_episodes,
    read_episodes_jsonl,
    read_mmc4,
    read_obelics,
)
from tests.helpers import EPISODE_COLORS, png_bytes, write_episodes


def test_episode_jsonl_layouts(tmp_path: Path) -> None:
    episodes = read_episodes_jsonl(write_episodes(tmp_path, n=4))
    assert len(episodes) == 4
    for ep in episodes:
        assert len(ep.demonstrations) == 2
        assert all(d.text.startswith("Colour: ") and d.text.endswith("\n") for d in ep.demonstrations)
        assert ep.query.text == "Colour:" and ep.answer in EPISODE_COLORS
        assert ep.target == f" {ep.answer}\n"
        assert ep.query.load().size == (64, 64)  # base64 and data URL both decode
        assert ep.demonstrations[0].load().mode == "RGB"  # path relative to the JSONL


def test_web_document_readers(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "cat.png").write_bytes(png_bytes("gray"))
    (images / "dog.jpg").write_bytes(png_bytes("brown"))
    (images / "sun.png").write_bytes(png_bytes("yellow"))
    mmc4 = tmp_path / "mmc4.jsonl"
    mmc4.write_text(json.dumps({
        "text_list": ["Our cat sleeps all day.", "The weather was fine.", "The dog plays outside.", "The sun rose."],
        "image_info": [
            {"image_name": "dog.jpg", "raw_url": "http://x/dog.jpg", "matched_text_index": 2, "matched_sim": 0.3},
            {"image_name": "cat.png", "raw_url": "http://x/cat.png", "matched_text_index": 0, "matched_sim": 0.3},
            {"image_name": "missing.png", "raw_url": "http://x/m.png", "matched_text_index": 1},
            {"raw_url": "https://cdn.example/path/sun.png?s=1", "matched_text_index": 3},
        ],
    }) + "\n")  # fmt: skip
    docs = list(read_mmc4(mmc4, images))
    assert [p.text for p in docs[0]] == ["Our cat sleeps all day.", "The dog plays outside.", "The sun rose."]
    obelics = tmp_path / "obelics.jsonl"
    obelics.write_text(json.dumps({
        "images": [None, "http://x/cat.png", None, "http://x/dog.jpg", "http://x/gone.png", None],
        "texts": ["Intro text.", None, "About the cat.", None, None, "About the dog."],
    }) + "\n")  # fmt: skip
    docs = list(read_obelics(obelics, images))
    assert [(Path(str(p.image)).name, p.text) for p in docs[0]] == [("cat.png", "About the cat."),
                                                                    ("dog.jpg", "About the dog.")]  # fmt: skip
    episodes = document_episodes(docs, max_shots=4)
    assert len(episodes) == 1
    assert episodes[0].demonstrations[0].text == "About the cat.\n"
    assert episodes[0].query.text == "" and episodes[0].target == "About the dog.\n"


def test_demo_text_layout() -> None:
    assert demo_text("Q: x? A:", "yes") == "Q: x? A: yes\n"
    assert demo_text("", "A caption.") == "A caption.\n"
    assert Episode((), Pair("x.png", "Caption:"), "a dog").target == " a dog\n"
