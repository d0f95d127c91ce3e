"""Wire types of ``POST /v1/chat/completions`` and ``GET /v1/models``, in OpenAI's shapes.

No logic beyond field validation. What the server does with each OpenAI field:

- used: ``messages``, ``model``, ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``,
  ``seed``, ``stop``, ``stream``, ``stream_options.include_usage``, ``n`` = 1, and aim-serve's own
  ``demonstrations`` (the object of ``/generate``, sent by the ``openai`` client with ``extra_body``);
- accepted and ignored, as they change nothing in the answer: ``user``, ``metadata``, ``store``,
  ``service_tier``, ``safety_identifier``, ``prompt_cache_key``, ``parallel_tool_calls``,
  ``stream_options.include_obfuscation``, an image part's ``detail``;
- refused with 400 ``unsupported_parameter`` naming the field, unless given its neutral value, as they
  would change the answer in ways this server cannot honour: ``UNSUPPORTED`` below;
- anything else is refused as an unknown field (400 naming it), as OpenAI does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.wire import MAX_SEED, DemonstrationSelection, StopString, Text

MAX_MESSAGES = 256
MAX_STOP_STRINGS = 8


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- request ---------------------------------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ImageURL(_Strict):
    url: str = Field(description="data:image/...;base64,... (or plain base64); http(s) URLs are refused")
    detail: Literal["auto", "low", "high"] | None = Field(None, description="accepted and ignored")


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class SystemMessage(_Strict):
    role: Literal["system", "developer"]  # "developer" is OpenAI's newer name for the system turn
    content: Text | list[TextPart]
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: Text | list[ContentPart]
    name: str | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: Text | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="a last chunk with usage and no choices")
    include_obfuscation: bool | None = Field(None, description="accepted and ignored")


# Fields OpenAI defines that would change the answer, each with its neutral values (accepted).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
}


class ChatCompletionRequest(_Strict):
    messages: list[Message] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="the last one is the user's query (its image, if any, is the query image)",
    )
    model: str | None = Field(None, description="the id from GET /v1/models or the model's name; none: it")
    demonstrations: DemonstrationSelection | None = Field(
        None, description="aim-serve: the demonstrations, as in /generate; omit for zero-shot"
    )
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI: max_completion_tokens")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="none: as many as the context holds, up to the server's limit"
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="OpenAI's default, 1; 0 is greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: StopString | list[StopString] | None = Field(None, description=f"up to {MAX_STOP_STRINGS}")
    n: int = Field(1, ge=1, description="only 1")
    stream: bool = False
    stream_options: StreamOptions | None = None

    # Accepted, ignored: they change nothing in the answer.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    parallel_tool_calls: bool | None = None

    # Refused unless neutral (see UNSUPPORTED); typed loosely so that the refusal names the field.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None

    @model_validator(mode="after")
    def _stop_list(self) -> ChatCompletionRequest:
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return self


# -- response --------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens served from the engine's prefix cache")


class ChatUsage(BaseModel):
    prompt_tokens: int = Field(description="fused_tokens + query_tokens: what the engine read")
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    fused_tokens: int = Field(description="aim-serve: the demonstrations' fused tokens")
    query_tokens: int = Field(description="aim-serve: the conversation and query, image included")
    raw_multimodal_prompt_tokens: int = Field(
        description="aim-serve: what the prompt would cost with each demonstration as image + text tokens"
    )


FinishReason = Literal["stop", "length", "abort"]


class AssistantReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantReply
    finish_reason: FinishReason | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = Field(description="the bank fingerprint: backbone, projector, layer, dtype")
    choices: list[Choice]
    usage: ChatUsage
    demonstrations: list[str] = Field(description="aim-serve: ids of the demonstrations used, in order")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a stream. The chunk with ``finish_reason`` also lists the
    demonstrations; with ``stream_options.include_usage`` a last chunk has no choices and the usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: ChatUsage | None = None
    demonstrations: list[str] | None = None


class ModelCard(BaseModel):
    id: str = Field(description="the model's name and its projector: '<model>:<projector digest, 12 hex>'")
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aim-serve"
    root: str = Field(description="the backbone's name, also accepted as 'model' in requests")
    max_model_len: int
    projector: str = Field(description="sha256 of the projector's config and weights")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
