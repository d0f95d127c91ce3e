from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.auth import get_tenant
from server.deps import StateDep
from server.errors import ServiceUnavailableError
from server.openapi import errors

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready", responses=errors(401, 503), dependencies=[Depends(get_tenant)])
async def ready(request: Request) -> dict:
    """Model loaded, engine healthy and bank reachable."""
    state = getattr(request.app.state, "aim", None)
    if state is None:
        raise ServiceUnavailableError("the server is still starting", code="not_ready")
    try:
        await state.engine.check_health()
    except Exception as exc:
        raise ServiceUnavailableError(f"engine is not healthy: {exc}", code="engine_unhealthy") from None
    try:
        await state.bank.ping()
    except Exception as exc:
        raise ServiceUnavailableError(f"bank is not reachable: {exc}", code="bank_unreachable") from None
    return {
        "status": "ready",
        "model": state.encoder.backbone.name,
        "engine": state.engine.name,
        "bank": state.redis.description,
        "fingerprint": state.fingerprint,
        "projector": state.projector,
        "dtype": str(state.encoder.dtype).removeprefix("torch."),
        "max_model_len": state.engine.max_model_len,
    }


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses=errors(401, 503),
    dependencies=[Depends(get_tenant)],
)
async def metrics(state: StateDep) -> Response:
    state.metrics.bank_cache_hits.set(state.bank.cache_hits)
    state.metrics.bank_cache_misses.set(state.bank.cache_misses)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
