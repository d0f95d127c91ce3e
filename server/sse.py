"""Server-sent events as every streaming route sends them: one ``data:`` event per payload, then
``data: [DONE]``. The status line is already sent when a stream fails, so an error raised while it runs
travels as its last event, in the error envelope, before ``[DONE]``: a client never sees a cut stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from server.errors import error_body


async def server_sent_events(payloads: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for payload in payloads:
            yield f"data: {payload}\n\n"
    except Exception as exc:
        yield f"data: {json.dumps(error_body(exc))}\n\n"
    yield "data: [DONE]\n\n"
