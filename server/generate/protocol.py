"""Wire types of ``POST /generate``. No logic beyond field validation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.wire import MAX_SEED, DemonstrationSelection, StopString, Text

# DemonstrationSelection is shared with /v1/chat/completions; it is part of this protocol too.
__all__ = ["DemonstrationSelection", "GenerateChunk", "GenerateRequest", "GenerateResponse", "Query", "Usage"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Query(_Strict):
    image: str | None = Field(None, description="base64 image or data URL; omit for a text-only query")
    text: Text


class GenerateRequest(_Strict):
    query: Query
    demonstrations: DemonstrationSelection | None = Field(None, description="omit for zero-shot")
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy (so is anything below 1e-5)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: StopString | list[StopString] | None = Field(None, description="stop strings (up to 8)")
    stream: bool = False

    @model_validator(mode="after")
    def _stop_list(self) -> GenerateRequest:
        if isinstance(self.stop, list) and len(self.stop) > 8:
            raise ValueError("at most 8 stop strings")
        return self


class Usage(BaseModel):
    prompt_tokens: int = Field(description="fused_tokens + query_tokens: what the engine read")
    fused_tokens: int
    query_tokens: int
    completion_tokens: int
    raw_multimodal_prompt_tokens: int = Field(
        description="prompt tokens the same request would cost with each demonstration as image + text tokens"
    )
    cached_tokens: int = Field(0, description="prompt tokens served from the engine's prefix cache")


class GenerateResponse(BaseModel):
    id: str
    text: str
    finish_reason: Literal["stop", "length", "abort"] | None
    demonstrations: list[str]
    usage: Usage


class GenerateChunk(BaseModel):
    """One server-sent event of a stream; the last one carries finish_reason and usage."""

    id: str
    text: str = Field(description="new text since the previous event")
    finish_reason: Literal["stop", "length", "abort"] | None = None
    demonstrations: list[str] | None = None
    usage: Usage | None = None
