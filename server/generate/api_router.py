from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from server.deps import GenerateServiceDep
from server.errors import error_body
from server.generate.protocol import GenerateRequest, GenerateResponse
from server.generate.serving import (
    GenerateService,
    PreparedRequest,
    generate_chunks,
    generate_request,
    generate_response,
)
from server.openapi import SSE_EVENT, errors

router = APIRouter(tags=["generate"])


async def _events(service: GenerateService, prepared: PreparedRequest) -> AsyncIterator[str]:
    try:
        async for chunk in generate_chunks(service, prepared):
            yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
    except Exception as exc:  # the status line is sent: the error travels as the stream's last event
        yield f"data: {json.dumps(error_body(exc))}\n\n"
    yield "data: [DONE]\n\n"


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
    body: GenerateRequest, service: GenerateServiceDep
) -> GenerateResponse | StreamingResponse:
    """Answer a few-shot query over cached fused tokens. With ``stream: true``, server-sent events."""
    prepared = await service.prepare(generate_request(body))  # every 4xx here, before any byte streams
    if body.stream:
        return StreamingResponse(_events(service, prepared), media_type="text/event-stream")
    return generate_response(await service.generate(prepared))
