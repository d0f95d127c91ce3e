from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from server.deps import GenerateServiceDep
from server.generate.protocol import GenerateRequest, GenerateResponse
from server.generate.serving import (
    generate_chunks,
    generate_request,
    generate_response,
)
from server.openapi import SSE_EVENT, errors
from server.sse import server_sent_events

router = APIRouter(tags=["generate"])


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
            "description": "JSON, or with stream: true server-sent events ending with data: [DONE]",
        },
        **errors(401, 400, 404, 413, 503),
    },
)
async def generate(
    body: GenerateRequest, service: GenerateServiceDep, response: Response
) -> GenerateResponse | StreamingResponse:
    """Answer a few-shot query over cached fused tokens. With ``stream: true``, server-sent events."""
    prepared = await service.prepare(generate_request(body))  # every 4xx here, before any byte streams
    if body.stream:
        chunks = (c.model_dump_json(exclude_none=True) async for c in generate_chunks(service, prepared))
        return StreamingResponse(server_sent_events(chunks), media_type="text/event-stream")
    completion = await service.generate(prepared)
    # Time spent in the engine (W3C Server-Timing): end-to-end minus this is the server's own overhead.
    response.headers["Server-Timing"] = f"engine;dur={completion.engine_seconds * 1000:.1f}"
    return generate_response(completion)
