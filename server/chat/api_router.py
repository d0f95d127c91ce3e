"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``GET /v1/models``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from server.chat.protocol import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList
from server.deps import ChatServiceDep, StateDep
from server.openapi import SSE_EVENT, errors
from server.sse import server_sent_events

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
            "description": "JSON, or with stream: true server-sent chat.completion.chunk events ending with "
            "data: [DONE]",
        },
        **errors(401, 400, 404, 413, 503),
    },
)
async def chat_completions(
    body: ChatCompletionRequest, service: ChatServiceDep
) -> ChatCompletion | StreamingResponse:
    """OpenAI's chat completions, with aim-serve's ``demonstrations`` as an extra body field."""
    prepared = await service.prepare(body)  # every 4xx happens here, before any byte is streamed
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = server_sent_events(service.stream(prepared, include_usage=include_usage))
        return StreamingResponse(events, media_type="text/event-stream")
    return await service.create(prepared)


@router.get("/models", responses=errors(401, 503))
async def list_models(state: StateDep) -> ModelList:
    """The served model: its id names the backbone and the projector."""
    return state.model.models()


@router.get("/models/{model}", responses=errors(401, 404, 503))
async def retrieve_model(model: str, state: StateDep) -> ModelCard:
    return state.model.model(model)
