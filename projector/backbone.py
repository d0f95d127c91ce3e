"""The frozen MLLM, seen through the two operations AIM needs.

``encode_demonstration`` reads an (image, text) pair once and keeps the hidden states at the text
positions; ``embed_query`` builds the query's input embeddings with the image features spliced in by
the model's own forward pass. The adapter works for any transformers image-text-to-text model whose
decoder (``get_decoder()``: ``model.language_model`` for the LLaVA family, ``model.text_model`` for
Idefics3) receives ``inputs_embeds`` and places tokens at plain 1-D positions: ``SUPPORTED_MODEL_TYPES``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from projector.models import register_model_types
from projector.processors import load_processor
from projector.templates import (
    DEMONSTRATIONS_SLOT,
    Templates,
    conversation_prompt,
    model_templates,
    read_recipe,
    split_at_demonstrations,
)

# Model types whose tokens sit at plain 1-D positions, so prompt embeddings carry everything the decoder
# needs. Each is tested end to end on a tiny random build (projector/models/tiny*.py).
SUPPORTED_MODEL_TYPES = ("llava", "llava_next", "llava_onevision", "idefics3")

_MROPE = (
    "multimodal RoPE (M-RoPE) gives each image token a (time, height, width) position and shifts every "
    "later token by the image's grid size instead of its token count; prompt embeddings carry no "
    "positions, so vLLM and transformers place them at 1-D positions and the decoder reads a different "
    "prompt (measured on a tiny random Qwen2-VL: bench/qwen2_vl_mrope.py), and vLLM 0.32 computes M-RoPE "
    "positions from token ids, which a prompt-embeddings request does not have"
)
# Known image-text models that cannot be served through prompt embeddings, and why.
REFUSED_MODEL_TYPES = {t: _MROPE for t in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")}


def check_model_type(model_type: str | None, source: str) -> None:
    """Refuse a model type the adapter cannot serve, saying why where the reason is known."""
    if model_type in SUPPORTED_MODEL_TYPES:
        return
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    reason = REFUSED_MODEL_TYPES.get(str(model_type))
    if reason is not None:
        raise BackboneError(
            f"{source} is a {model_type!r} model, which AIM cannot serve: {reason}. Supported: {supported}"
        )
    raise BackboneError(f"{source} is a {model_type!r} model; supported: {supported}")


class BackboneError(RuntimeError):
    """The model cannot be loaded or used as an AIM backbone."""


@dataclass(frozen=True)
class DemonstrationEncoding:
    """What the frozen backbone makes of one demonstration."""

    hidden_states: torch.Tensor  # [text_tokens, hidden]: one row per text token, image tokens dropped
    image_tokens: int  # image tokens the demonstration occupied in the backbone's prompt
    raw_tokens: int  # what the demonstration costs as an ordinary multimodal prompt segment
    image_embedding: torch.Tensor | None = None  # [hidden] float32: see image_embedding()
    text_embeds: torch.Tensor | None = None  # [text_tokens, hidden]: those tokens' input embeddings


@dataclass(frozen=True)
class QueryEmbedding:
    """The query's input embeddings, split where the demonstrations go in between."""

    prefix: torch.Tensor  # [p, hidden]: tokens that open every prompt (BOS), placed before demonstrations
    body: torch.Tensor  # [n, hidden]: the rest of the query, image features spliced in
    image_tokens: int
    image_embedding: torch.Tensor | None = None  # [hidden] float32, None without an image

    @property
    def num_tokens(self) -> int:
        return int(self.prefix.shape[0] + self.body.shape[0])


class _Captured(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, inputs_embeds: torch.Tensor) -> None:
        self.inputs_embeds = inputs_embeds


class Backbone:
    """A loaded, frozen LLaVA-family model with its processor."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        name: str,
        revision: str | None = None,
        templates: Templates | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> None:
        check_model_type(getattr(model.config, "model_type", None), "the model")
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.revision = revision
        self.templates = templates or Templates()
        self.recipe = recipe or {}  # how a locally built model was made (weights hashes included)
        self.image_token_id: int = int(model.config.image_token_id)
        text_config = model.config.get_text_config()
        self.hidden_size: int = int(text_config.hidden_size)
        self.max_position_embeddings: int = int(text_config.max_position_embeddings)
        # The decoder is shared with the engine, which may run it on another thread at the same time:
        # the capture hook is installed once and fires only for the thread that asked for a capture.
        self._capturing = threading.local()
        self.decoder.register_forward_pre_hook(self._capture_hook, with_kwargs=True)
        self.special_ids = torch.tensor(
            sorted({i for i in (self.tokenizer.bos_token_id, self.tokenizer.pad_token_id) if i is not None}),
            dtype=torch.long,
        )
        self._check_demonstrations_slots()

    def _check_demonstrations_slots(self) -> None:
        """A few-shot template's ``{demonstrations}`` slot must fall between two tokens, or the query
        prefix cannot be cut there: refused when the backbone is built (server start-up), not per query."""
        for has_image in (True, False):
            head, rest = split_at_demonstrations(self.templates.for_query(has_image, few_shot=True))
            if not head:
                continue
            head_ids = self.tokenizer(head, add_special_tokens=False)["input_ids"]
            ids = self.tokenizer(head + rest.format(text="x"), add_special_tokens=False)["input_ids"]
            if ids[: len(head_ids)] != head_ids:
                raise BackboneError(
                    f"the few-shot query template's text before {DEMONSTRATIONS_SLOT} ({head!r}) does not "
                    "tokenize on its own: put the slot between words or after a newline"
                )

    @property
    def decoder(self) -> torch.nn.Module:
        """The language model that reads ``inputs_embeds`` (its attribute path differs by architecture)."""
        return self.model.get_decoder()

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.get_output_embeddings()

    # -- identity -------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else [int(e) for e in eos]

    def identity(self) -> dict[str, Any]:
        """What makes two backbones produce the same hidden states: the key of everything cached."""
        config_json = json.dumps(_without_paths(self.model.config.to_dict()), sort_keys=True)
        return {
            "name": self.name,
            "revision": self.revision,
            "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
            "templates": self.templates.identity(),
            "recipe": self.recipe,
        }

    def demonstration_text_ids(self, text: str) -> list[int]:
        """The token ids at a demonstration's text positions, in order, from the tokenizer alone (no
        image, no forward): the demonstration template's tokens less special and ``<image>`` tokens.
        They are the ids of ``encode_demonstration``'s rows unless the processor splits the text
        differently, which a caller comparing the two must check."""
        skip = set(self.special_ids.tolist()) | {self.image_token_id}
        prompt = self.templates.demonstration_prompt(text)
        return [i for i in self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if i not in skip]

    # -- the two AIM operations -----------------------------------------------------------------
    def _inputs(self, images: list[Image.Image], prompt: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The model's inputs, and which positions the processor wrote for images.

        The second is every token an image expanded into: its feature tokens and, for architectures
        that frame them (Idefics3's ``<fake_token_around_image>``, tile markers and the newlines between
        tile rows), the framing too. It comes from the processor's ``mm_token_type_ids``, and is the
        feature tokens alone for processors that do not report them.
        """
        if images:
            batch = self.processor(
                images=images, text=prompt, return_tensors="pt", return_mm_token_type_ids=True
            )
        else:
            batch = self.processor(text=prompt, return_tensors="pt")
        inputs, span = self._with_image_span(batch)
        return inputs, span[0]

    def _with_image_span(self, batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        types = batch.pop("mm_token_type_ids", None)
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        ids = inputs["input_ids"]
        is_feature = ids == self.image_token_id
        return inputs, (types.to(ids.device) != 0) | is_feature if types is not None else is_feature

    def encode_demonstration(
        self, image: Image.Image, text: str, *, layer: int = -1
    ) -> DemonstrationEncoding:
        """Hidden states of layer ``layer`` at the demonstration's text positions.

        Runs under whatever grad mode the caller chose: the server reads in inference mode, training
        under ``no_grad`` (a tensor made in inference mode cannot be saved for backward).
        """
        inputs, is_image = self._inputs([image], self.templates.demonstration_prompt(text))
        ids = inputs["input_ids"][0]
        out = self.model.model(**inputs, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[layer][0]
        is_counted = ~torch.isin(ids, self.special_ids.to(ids.device))  # everything but BOS / padding
        image_tokens = int(is_image.sum())
        if image_tokens == 0:
            raise BackboneError("the demonstration template has no <image> placeholder")
        return DemonstrationEncoding(
            hidden_states=hidden[is_counted & ~is_image].detach().clone(),
            image_tokens=image_tokens,
            raw_tokens=int(is_counted.sum()),
            image_embedding=image_embedding(out.hidden_states[0][0], ids == self.image_token_id),
            text_embeds=out.hidden_states[0][0][is_counted & ~is_image].detach().clone(),
        )

    def embed_query(
        self,
        image: Image.Image | None,
        text: str,
        history: Sequence[tuple[str, str]] = (),
        *,
        few_shot: bool = False,
    ) -> QueryEmbedding:
        """The query's input embeddings exactly as the model's forward would compute them.

        The model's own forward runs until the decoder is about to start, and the ``inputs_embeds``
        it hands the decoder are taken there: the image is spliced in by the model's own code, for
        every architecture in the family. Runs under the caller's grad mode. ``history``: earlier
        turns of a conversation, ``(role, text)``, placed as ``conversation_prompt`` says; without
        any, the query template alone. ``few_shot``: the query will follow demonstrations, and is
        wrapped in the few-shot query template (``Templates.for_query``).
        """
        head, template = split_at_demonstrations(self.templates.for_query(image is not None, few_shot))
        prompt = conversation_prompt(
            template, history, text, self._render_chat if self.chat_template else None
        )
        return self._embed_prompt([image] if image is not None else [], head + prompt, head)

    @property
    def image_token(self) -> str:
        """The placeholder the processor expands into image tokens (``<image>``)."""
        return str(self.tokenizer.convert_ids_to_tokens(self.image_token_id))

    @property
    def chat_template(self) -> str | None:
        """The model's chat template (the tokenizer's, else the processor's), if it has one."""
        return getattr(self.tokenizer, "chat_template", None) or getattr(
            self.processor, "chat_template", None
        )

    def _render_chat(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def raw_prompt_embeds(
        self,
        demonstrations: list[tuple[Image.Image, str]],
        image: Image.Image | None,
        text: str,
    ) -> QueryEmbedding:
        """The ordinary multimodal few-shot prompt, for comparison with AIM.

        Every demonstration is written out with its own ``<image>`` (demonstration template), then
        the query (the few-shot query template, as AIM's query after fused tokens), and the whole
        interleaved prompt goes through the model's own forward once, as an MLLM's multi-image
        in-context prompt would. ``prefix``/``body`` split as in ``embed_query``; ``image_tokens``
        counts all images' tokens. Each demonstration text ends with the separator
        (``templates.separated``), as when it is encoded.
        """
        head, template = split_at_demonstrations(
            self.templates.for_query(image is not None, few_shot=bool(demonstrations))
        )
        parts = [head, *(self.templates.demonstration_prompt(t) for _, t in demonstrations)]
        parts.append(template.format(text=text))
        images = [im for im, _ in demonstrations] + ([image] if image is not None else [])
        return self._embed_prompt(images, "".join(parts), head)

    def _embed_prompt(self, images: list[Image.Image], prompt: str, head: str = "") -> QueryEmbedding:
        inputs, is_image = self._inputs(images, prompt)
        return self._split_query(inputs["input_ids"][0], self._capture(inputs)[0], is_image, head)

    def _capture(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``inputs_embeds`` the model's forward hands its decoder, [batch, seq, hidden]."""
        self._capturing.active = True
        try:
            self.model.model(**inputs, use_cache=False)
        except _Captured as captured:
            return captured.inputs_embeds.detach().clone()
        finally:
            self._capturing.active = False
        raise BackboneError("the decoder was never called")  # pragma: no cover - the hook always fires

    def _split_query(
        self, ids: torch.Tensor, embeds: torch.Tensor, is_image: torch.Tensor, head: str = ""
    ) -> QueryEmbedding:
        """``prefix``: what goes before demonstrations: the leading BOS, or the tokens of ``head`` (the
        few-shot template's text before its demonstrations slot) after any BOS the tokenizer adds."""
        special = set(self.special_ids.tolist())
        if head:
            head_ids = self.tokenizer(head, add_special_tokens=False)["input_ids"]
            # after the BOS the tokenizer may add (none, or one or two special tokens)
            starts = [n for n in range(3) if ids[n : n + len(head_ids)].tolist() == head_ids]
            if not starts:
                raise BackboneError(f"the text before {DEMONSTRATIONS_SLOT} does not tokenize on its own")
            n_prefix = starts[0] + len(head_ids)
        else:
            n_prefix = 0
            while n_prefix < len(ids) and int(ids[n_prefix]) in special:
                n_prefix += 1
        is_feature = ids == self.image_token_id
        return QueryEmbedding(
            prefix=embeds[:n_prefix],
            body=embeds[n_prefix:],
            image_tokens=int(is_image.sum()),
            image_embedding=image_embedding(embeds, is_feature) if bool(is_feature.any()) else None,
        )

    # -- batched forms: one padded forward for many items ------------------------------------------
    def _batch_inputs(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``_inputs`` for many prompts: the padded batch and each row's image span."""
        # Right padding: a causal decoder's real positions never attend to the pads after them and keep
        # their positions (0..n-1), so each row computes what the unbatched forward computes.
        batch = self.processor(
            images=images,
            text=prompts,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            return_mm_token_type_ids=True,
        )
        return self._with_image_span(batch)

    @property
    def can_batch(self) -> bool:
        """Batched forms need a padding token; without one every item runs alone."""
        return self.tokenizer.pad_token_id is not None

    def encode_demonstrations(
        self, items: Sequence[tuple[Image.Image, str]], *, layer: int = -1
    ) -> list[DemonstrationEncoding]:
        """``encode_demonstration`` of every item, in one padded forward.

        Equal to the one-at-a-time results up to float rounding: kernels reduce in another order over a
        padded length or a larger batch (measured: tiny model <= 4e-6, aim-mini <= 4e-5 on last-layer
        hidden states). The caller bounds the batch size.
        """
        if len(items) <= 1 or not self.can_batch:
            return [self.encode_demonstration(image, text, layer=layer) for image, text in items]
        prompts = [self.templates.demonstration_prompt(text) for _, text in items]
        inputs, span = self._batch_inputs([image for image, _ in items], prompts)
        out = self.model.model(**inputs, output_hidden_states=True, use_cache=False)
        encodings = []
        for row, ids in enumerate(inputs["input_ids"]):
            real = inputs["attention_mask"][row].bool()
            is_image = span[row] & real
            is_counted = ~torch.isin(ids, self.special_ids.to(ids.device)) & real
            image_tokens = int(is_image.sum())
            if image_tokens == 0:
                raise BackboneError("the demonstration template has no <image> placeholder")
            encodings.append(
                DemonstrationEncoding(
                    hidden_states=out.hidden_states[layer][row][is_counted & ~is_image].detach().clone(),
                    image_tokens=image_tokens,
                    raw_tokens=int(is_counted.sum()),
                    image_embedding=image_embedding(
                        out.hidden_states[0][row], (ids == self.image_token_id) & real
                    ),
                    text_embeds=out.hidden_states[0][row][is_counted & ~is_image].detach().clone(),
                )
            )
        return encodings

    def embed_queries(
        self, items: Sequence[tuple[Image.Image, str, Sequence[tuple[str, str]]]], *, few_shot: bool = False
    ) -> list[QueryEmbedding]:
        """``embed_query`` of queries that all have an image, in one padded forward up to the decoder.

        Token embeddings are looked up row by row, so only the vision tower's batched forward can
        round differently from the one-at-a-time result (measured: tiny model equal, aim-mini <= 3e-6).
        """
        if len(items) <= 1 or not self.can_batch:
            return [
                self.embed_query(image, text, history, few_shot=few_shot) for image, text, history in items
            ]
        render = self._render_chat if self.chat_template else None
        head, template = split_at_demonstrations(self.templates.for_query(True, few_shot))
        prompts = [head + conversation_prompt(template, history, text, render) for _, text, history in items]
        inputs, span = self._batch_inputs([image for image, _, _ in items], prompts)
        embeds = self._capture(inputs)
        return [
            self._split_query(inputs["input_ids"][row][real], embeds[row][real], span[row][real], head)
            for row, real in enumerate(inputs["attention_mask"].bool())
        ]

    def _capture_hook(self, _module: torch.nn.Module, _args: tuple, kwargs: dict) -> None:
        if getattr(self._capturing, "active", False):
            raise _Captured(kwargs["inputs_embeds"])


def image_embedding(input_embeds: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
    """One vector for an image: the mean of its features as the model splices them into the decoder's
    input. It is computed by the forward pass that reads a demonstration or a query anyway, and a
    demonstration's and a query's come out in the same space, which is what per-query selection needs."""
    return input_embeds[is_image].float().mean(dim=0).detach().cpu().contiguous()


def _without_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus where it was loaded from: the same model in another directory is the same model."""
    return {
        k: _without_paths(v) if isinstance(v, dict) else v for k, v in config.items() if k != "_name_or_path"
    }


def load_backbone(
    model: str | Path,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    templates: Templates | None = None,
    template_overrides: dict[str, str | None] | None = None,
) -> Backbone:
    """Load a LLaVA-family MLLM from a local directory or a hub id.

    A directory may carry an ``aim_recipe.json`` naming the model and its prompt templates (the
    models built by this project do); explicit ``templates`` win, ``template_overrides`` replace
    single ones.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    register_model_types()  # a directory of a built-in model may name one of this project's classes
    source = str(model)
    local = Path(source)
    recipe = read_recipe(local) if local.is_dir() else {}
    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load model config from {source!r}: {exc}") from exc
    check_model_type(config.model_type, repr(source))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    mllm = AutoModelForImageTextToText.from_pretrained(source, revision=revision, dtype=dtype).to(device)
    processor = load_processor(source, config.model_type, revision=revision)
    if templates is None:
        templates = model_templates(recipe, **(template_overrides or {}))
    name = recipe.get("name") or (local.name if local.is_dir() else source)
    return Backbone(mllm, processor, name=name, revision=revision, templates=templates, recipe=recipe)
