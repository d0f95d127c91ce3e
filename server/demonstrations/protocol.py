"""Wire types of the demonstration API. No logic beyond field validation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.wire import JsonObject, SetName, Text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DemonstrationItem(_Strict):
    image: str = Field(description="base64-encoded image bytes, or a data URL (data:image/png;base64,...)")
    text: Text = Field(description="the demonstration's text, e.g. a question and its answer")
    metadata: JsonObject | None = Field(None, description="free-form JSON object stored with it")


class RegisterRequest(_Strict):
    set: SetName | None = Field(None, description="append the items to this named set")
    items: list[DemonstrationItem] = Field(min_length=1)


class RegisteredItem(BaseModel):
    id: str
    fused_tokens: int = Field(description="fused tokens stored for it (one per text token)")
    created: bool = Field(description="false when the same image and text were registered before")


class RegisterResponse(BaseModel):
    set: str | None
    items: list[RegisteredItem]


class Demonstration(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    fused_tokens: int
    image_tokens: int
    raw_tokens: int = Field(description="tokens it costs as an ordinary multimodal prompt (image + text)")
    created_at: float
    sets: list[str]


class DemonstrationDeleted(BaseModel):
    id: str
    deleted: bool = True


class DemonstrationSet(BaseModel):
    name: str
    ids: list[str] = Field(description="ids offset..offset+limit of the set, in registration order")
    size: int = Field(description="how many demonstrations the whole set has")
    offset: int
    limit: int


class SetSummary(BaseModel):
    name: str
    size: int


class SetList(BaseModel):
    sets: list[SetSummary] = Field(description="sets in name order, one page of them")
    total: int = Field(description="how many sets there are")
    offset: int
    limit: int


MAX_IDS_PER_REQUEST = 10_000


class AddToSetRequest(_Strict):
    ids: list[str] = Field(
        min_length=1,
        max_length=MAX_IDS_PER_REQUEST,
        description="registered demonstrations to append, in order; members already in the set stay where they are",
    )


class SetItemsAdded(BaseModel):
    name: str
    size: int = Field(description="the set's size afterwards")


class SetDeleted(BaseModel):
    name: str
    deleted: bool = True
