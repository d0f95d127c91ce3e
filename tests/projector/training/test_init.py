"""``--init lstsq``: the ridge map from hidden states to the same tokens' input embeddings can only emit
what it was fitted on, so the made-up-word vocabulary demonstrations must widen what it reaches."""

from __future__ import annotations

from pathlib import Path

import torch

from projector.backbone import Backbone
from projector.evaluation.tasks import EVAL_NONCE_WORDS
from projector.projector import Projector, ProjectorConfig
from projector.training.episodes import read_episodes_jsonl
from projector.training.features import FeatureCache
from projector.training.generic import BINDING_TEMPLATE, vocabulary_pairs, vocabulary_words
from projector.training.init import lstsq_init
from tests.helpers import write_episodes


def test_vocabulary_words_are_fixed_distinct_and_no_evaluation_label() -> None:
    words = vocabulary_words()
    assert words == vocabulary_words() and len(set(words)) == len(words) == 2000
    assert words[:40] != vocabulary_words(seed=1)[:40]
    assert not set(words) & set(EVAL_NONCE_WORDS)


def test_vocabulary_rows_widen_what_the_fitted_map_can_emit(backbone: Backbone, tmp_path: Path) -> None:
    episodes = read_episodes_jsonl(write_episodes(tmp_path, n=6))
    cache = FeatureCache(backbone)
    vocabulary = vocabulary_pairs(episodes, n=60)
    assert len(vocabulary) == 60 and all(p.text.startswith(BINDING_TEMPLATE + " ") for p in vocabulary)
    # the vocabulary names the episodes' own images
    assert {p.image for p in vocabulary} == {d.image for ep in episodes for d in ep.demonstrations}

    def fitted(extra) -> tuple[int, torch.Tensor]:
        projector = Projector(ProjectorConfig(hidden_size=backbone.hidden_size, backbone=backbone.name))
        rows = lstsq_init(projector, episodes, cache, ridge=1e-3, vocabulary=extra)
        return rows, projector.linear.weight.detach().double()

    narrow_rows, narrow = fitted([])
    broad_rows, broad = fitted(vocabulary)
    texts = {d.text for ep in episodes for d in ep.demonstrations}
    distinct = {t for text in texts for t in backbone.tokenizer(text, add_special_tokens=False)["input_ids"]}
    # the weight's output space is spanned by the centred embeddings of the tokens fitted on
    rank = lambda w: int(torch.linalg.matrix_rank(w, rtol=1e-6))  # noqa: E731
    assert broad_rows > narrow_rows
    assert rank(narrow) <= len(distinct) + 2 < rank(broad)
