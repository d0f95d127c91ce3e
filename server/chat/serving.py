"""Chat completions: map OpenAI's request onto the one generation path, and its results back.

Nothing here embeds, selects or generates: ``chat_request`` turns the messages into an
``InferenceRequest`` (the last user message is the query, earlier turns its history) and
``ChatService`` hands it to ``GenerateService``, the same ``prepare`` / ``generate`` / ``stream`` as
``POST /generate``. A one-message conversation therefore gives ``/generate``'s prompt to the byte.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from server.chat.protocol import (
    UNSUPPORTED,
    AssistantReply,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatUsage,
    Choice,
    ChunkChoice,
    Delta,
    ImagePart,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    TextPart,
    UserMessage,
)
from server.errors import APIError, NotFoundError
from server.generate.serving import (
    GenerateService,
    InferenceRequest,
    Params,
    PreparedRequest,
    TokenUsage,
    Turn,
)
from server.media import ImageField

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class ModelIdentity:
    """What ``/v1/models`` lists and ``model`` may name: the backbone, with its projector."""

    def __init__(self, name: str, projector_digest: str, max_model_len: int, created: int) -> None:
        self.name = name
        self.id = f"{name}:{projector_digest[:12]}"
        self.card = ModelCard(
            id=self.id, created=created, root=name, max_model_len=max_model_len, projector=projector_digest
        )

    def models(self) -> ModelList:
        return ModelList(data=[self.card])

    def model(self, model_id: str) -> ModelCard:
        if model_id not in (self.id, self.name):
            raise self._not_found(model_id)
        return self.card

    def check(self, model: str | None) -> None:
        if model is not None and model not in (self.id, self.name):
            raise self._not_found(model)

    def _not_found(self, model: str) -> NotFoundError:
        return NotFoundError(
            f"the model {model!r} does not exist; this server serves {self.id!r} (or {self.name!r})",
            param="model",
            code="model_not_found",
        )


def _unsupported(body: ChatCompletionRequest) -> None:
    for name, neutral in UNSUPPORTED.items():
        if getattr(body, name) not in neutral:
            raise APIError("is not supported by aim-serve", param=name, code="unsupported_parameter")
    if body.n != 1:
        raise APIError("only n=1 is supported (one choice per request)", param="n", code="unsupported_value")
    if body.stream_options is not None and not body.stream:
        raise APIError("is only allowed when stream is true", param="stream_options")
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise APIError(
            "and max_completion_tokens disagree; give one of them", param="max_tokens", code="invalid_value"
        )


def _image_field(part: ImagePart, param: str) -> ImageField:
    url = part.image_url.url
    if url.startswith(("http://", "https://")):
        # AIM_IMAGE_URL_ALLOWLIST (fetching from allowed hosts with size and time limits) is not
        # implemented: the server never makes a request on a caller's behalf.
        raise APIError(
            "http(s) image URLs are not fetched by this server: send the image as a data URL "
            "(data:image/png;base64,...)",
            param=param,
            code="image_url_not_allowed",
        )
    if not url.startswith("data:") and _URL_SCHEME.match(url) and "://" in url:
        raise APIError(
            "must be a data URL (data:image/...;base64,...)", param=param, code="invalid_image_url"
        )
    return ImageField(url, param)


def _text(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if isinstance(part, TextPart))


def chat_request(body: ChatCompletionRequest) -> InferenceRequest:
    """The protocol-independent request: the last message (a user's) is the query, the rest history."""
    _unsupported(body)
    *earlier, last = body.messages
    query_index = len(body.messages) - 1
    if not isinstance(last, UserMessage):
        raise APIError(
            f"the last message must be the user's query, not a {last.role!r} message",
            param=f"messages[{query_index}].role",
        )
    for i, message in enumerate(earlier):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart):
                    raise APIError(
                        "only the last message (the query) may carry an image",
                        param=f"messages[{i}].content[{j}]",
                        code="unsupported_value",
                    )
    image = None
    if isinstance(last.content, list):
        images = [(j, p) for j, p in enumerate(last.content) if isinstance(p, ImagePart)]
        if len(images) > 1:
            raise APIError(
                "a query carries one image at most",
                param=f"messages[{query_index}].content[{images[1][0]}]",
                code="unsupported_value",
            )
        if images:
            j, part = images[0]
            image = _image_field(part, f"messages[{query_index}].content[{j}].image_url.url")
    history = tuple(
        Turn("system" if m.role == "developer" else m.role, _text(m.content), f"messages[{i}].content")
        for i, m in enumerate(earlier)
    )
    max_tokens_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    return InferenceRequest(
        text=_text(last.content),
        image=image,
        history=history,
        demonstrations=body.demonstrations,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
        params=Params(
            text=f"messages[{query_index}].content", prompt="messages", max_tokens=max_tokens_param
        ),
    )


def chat_usage(usage: TokenUsage) -> ChatUsage:
    return ChatUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        fused_tokens=usage.fused_tokens,
        query_tokens=usage.query_tokens,
        raw_multimodal_prompt_tokens=usage.raw_multimodal_prompt_tokens,
    )


class ChatService:
    """The tenant's ``GenerateService`` seen through OpenAI's chat protocol."""

    def __init__(self, service: GenerateService, model: ModelIdentity, fingerprint: str) -> None:
        self.service = service
        self.model = model
        self.fingerprint = fingerprint

    async def prepare(self, body: ChatCompletionRequest) -> PreparedRequest:
        """Every 4xx of the request, before anything is generated or streamed."""
        self.model.check(body.model)
        return await self.service.prepare(chat_request(body), id_prefix="chatcmpl")

    async def create(self, prepared: PreparedRequest) -> ChatCompletion:
        completion = await self.service.generate(prepared)
        return ChatCompletion(
            id=completion.request_id,
            created=int(time.time()),
            model=self.model.id,
            system_fingerprint=self.fingerprint,
            choices=[
                Choice(
                    message=AssistantReply(content=completion.text), finish_reason=completion.finish_reason
                )
            ],
            usage=chat_usage(completion.usage),
            demonstrations=completion.demonstration_ids,
        )

    async def stream(self, prepared: PreparedRequest, *, include_usage: bool) -> AsyncIterator[str]:
        """The JSON of each chunk: the assistant's role first, then text, then ``finish_reason``
        (with the demonstrations), then with ``include_usage`` a chunk of usage alone."""
        created = int(time.time())

        def chunk(choices: list[ChunkChoice], **extra: Any) -> str:
            data = ChatCompletionChunk(
                id=prepared.request_id,
                created=created,
                model=self.model.id,
                system_fingerprint=self.fingerprint,
                choices=choices,
                **extra,
            ).model_dump(mode="json")
            for choice in data["choices"]:
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            if data["demonstrations"] is None:
                del data["demonstrations"]
            if not include_usage:
                del data["usage"]  # OpenAI: "usage": null on every chunk only when usage was asked for
            return json.dumps(data)

        yield chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])
        deltas = self.service.stream(prepared)
        try:
            async for delta in deltas:
                if not delta.finished:
                    yield chunk([ChunkChoice(delta=Delta(content=delta.text))])
                    continue
                yield chunk(
                    [ChunkChoice(delta=Delta(content=delta.text or None), finish_reason=delta.finish_reason)],
                    demonstrations=prepared.demonstration_ids,
                )
                if include_usage and delta.usage is not None:
                    yield chunk([], usage=chat_usage(delta.usage))
        finally:
            await deltas.aclose()  # a client gone closes this generator: the engine aborts the request
