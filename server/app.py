"""App factory and start-up, in one visible order: model, projector, bank, engine, services."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from bank import DemonstrationBank, fingerprint, open_redis
from bank.selection import SimilarityIndex
from projector.backbone import Backbone, load_backbone
from projector.encoder import AimEncoder
from projector.models import SHIPPED_PROJECTORS
from projector.projector import Projector
from server.auth import ApiKeys, get_tenant
from server.body_limit import BodySizeLimit
from server.chat.api_router import router as chat_router
from server.chat.serving import ModelIdentity
from server.demonstrations.api_router import router as demonstrations_router
from server.demonstrations.serving import DemonstrationService
from server.engines.factory import build_engine
from server.errors import install_error_handlers
from server.generate.api_router import router as generate_router
from server.generate.serving import GenerateService
from server.health.api_router import router as health_router
from server.media import ImageDecoder
from server.metrics import Metrics
from server.models import resolve_dtype, resolve_model
from server.openapi import install_openapi
from server.settings import Settings
from server.state import AppState

log = logging.getLogger(__name__)


def load_encoder(settings: Settings) -> AimEncoder:
    """The frozen backbone and the projector, checked against each other."""
    dtype = resolve_dtype(settings)
    backbone: Backbone = load_backbone(
        resolve_model(settings),
        revision=settings.model_revision,
        dtype=dtype,
        template_overrides={
            "demonstration": settings.demonstration_template,
            "query": settings.query_template,
            "text_query": settings.text_query_template,
        },
    )
    checkpoint = settings.projector or SHIPPED_PROJECTORS.get(settings.model)
    if checkpoint is not None:
        projector = Projector.load(checkpoint, backbone=backbone.name, hidden_size=backbone.hidden_size)
    else:
        projector = Projector.identity(
            backbone=backbone.name,
            hidden_size=backbone.hidden_size,
            layer=settings.layer,
            kind=settings.projector_kind,
        )
    return AimEncoder(backbone, projector, dtype=dtype)


def bank_fingerprint(encoder: AimEncoder) -> str:
    return fingerprint(
        backbone=encoder.backbone.identity(),
        projector_digest=encoder.projector.digest(),
        layer=encoder.layer,
        dtype=str(encoder.dtype).removeprefix("torch."),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    encoder = await asyncio.to_thread(load_encoder, settings)
    fp = bank_fingerprint(encoder)
    redis = await open_redis(
        settings.redis_url, settings.data_dir, durable_writes=settings.bank_durable_writes
    )
    try:
        bank = DemonstrationBank(
            redis.client,
            fp,
            hidden_size=encoder.backbone.hidden_size,
            cache_bytes=settings.bank_cache_bytes,
            wait_for_fsync=redis.wait_for_fsync,
        )
        async with build_engine(settings, encoder.backbone) as engine:
            metrics = Metrics()
            images = ImageDecoder(
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
                max_aspect_ratio=settings.max_image_aspect_ratio,
                max_request_pixels=settings.max_request_pixels,
                max_side=settings.max_image_side,
                concurrency=settings.image_decode_concurrency,
            )
            app.state.aim = AppState(
                settings=settings,
                encoder=encoder,
                bank=bank,
                redis=redis,
                engine=engine,
                metrics=metrics,
                demonstrations=DemonstrationService(encoder, bank, settings, metrics, images),
                generate=GenerateService(encoder, bank, engine, settings, metrics, images, SimilarityIndex()),
                fingerprint=fp,
                model=ModelIdentity(
                    encoder.backbone.name,
                    encoder.projector.digest(),
                    max_model_len=engine.max_model_len,
                    created=int(time.time()),
                ),
            )
            log.info(
                "ready: model %s, engine %s, bank %s (fingerprint %s)",
                encoder.backbone.name,
                engine.name,
                redis.description,
                fp,
            )
            try:
                yield
            finally:
                app.state.aim = None
    finally:
        await redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="aim-serve",
        version="0.1.0",
        summary="Multimodal few-shot inference with AIM fused demonstration tokens",
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    app.state.aim = None
    settings = app.state.settings
    app.state.api_keys = ApiKeys.from_settings(settings)  # bad keys stop the server here, not a request
    # Middleware runs outside-in in the reverse order of adding: hosts, then CORS, then the body limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    if settings.trusted_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts)
    install_error_handlers(app)
    install_openapi(app)
    authenticated = [Depends(get_tenant)]
    app.include_router(demonstrations_router, dependencies=authenticated)
    app.include_router(generate_router, dependencies=authenticated)
    app.include_router(chat_router, dependencies=authenticated)
    app.include_router(health_router)  # /health is open; /ready and /metrics authenticate themselves
    return app
