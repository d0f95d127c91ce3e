"""App factory and start-up, in one visible order: model, projector, bank, engine, services."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from bank import DemonstrationBank, fingerprint, open_redis
from bank.selection import SimilarityIndex
from projector.backbone import Backbone, load_backbone
from projector.encoder import AimEncoder
from projector.models import SHIPPED_PROJECTORS, is_tiny
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
from server.generate.query_batcher import QueryBatcher
from server.generate.serving import GenerateService
from server.health.api_router import router as health_router
from server.media import ImageDecoder
from server.metrics import Metrics
from server.models import resolve_dtype, resolve_model
from server.openapi import install_openapi
from server.settings import Settings
from server.state import AppState

log = logging.getLogger(__name__)


# AIM_PROJECTOR=identity: the explicit opt-in to the untrained projector on a model that is not tiny.
IDENTITY_PROJECTOR = "identity"


class ProjectorRequiredError(ValueError):
    """The model has no trained projector and the identity projector was not asked for explicitly."""


def choose_projector(settings: Settings) -> Path | None:
    """The projector checkpoint to serve; None means the identity projector.

    AIM_PROJECTOR wins (``identity`` is the explicit opt-in); else the projector shipped for a built-in
    model; else the identity projector, but only on the tiny test model. Anywhere else the identity
    projector feeds last-layer hidden states back as input embeddings, which was measured harmful
    (easy-VQA on aim-mini: 0.00 at k >= 4; binding: 0 % demonstration labels), so serving it silently is
    refused. Cheap (no weights load): ``aim serve`` calls it before starting anything.
    """
    if settings.projector is not None:
        if str(settings.projector) == IDENTITY_PROJECTOR:
            return None
        return Path(settings.projector)
    shipped = SHIPPED_PROJECTORS.get(settings.model)
    if shipped is not None:
        return shipped
    if is_tiny(settings.model):
        return None
    raise ProjectorRequiredError(
        f"model {settings.model!r} has no trained AIM projector. Without one, fused tokens are the "
        "backbone's last-layer hidden states fed back as input embeddings (the identity projector), which "
        "the decoder reads as noise. Train one for this model with `aim train --model "
        f"{settings.model} --data generic:2000 --data binding:500 --objective kl --kind residual "
        "--out runs/projector` and start with AIM_PROJECTOR=runs/projector/best (deploy/README.md has the "
        "recipe), or opt in to the untrained "
        f"projector explicitly with AIM_PROJECTOR={IDENTITY_PROJECTOR}."
    )


def load_encoder(settings: Settings) -> AimEncoder:
    """The frozen backbone and the projector, checked against each other."""
    checkpoint = choose_projector(settings)  # refuses before any weights load
    dtype = resolve_dtype(settings)
    backbone: Backbone = load_backbone(
        resolve_model(settings),
        revision=settings.model_revision,
        dtype=dtype,
        template_overrides={
            "demonstration": settings.demonstration_template,
            "query": settings.query_template,
            "text_query": settings.text_query_template,
            "few_shot_query": settings.few_shot_query_template,
            "few_shot_text_query": settings.few_shot_text_query_template,
        },
    )
    if checkpoint is not None:
        projector = Projector.load(checkpoint, backbone=backbone.name, hidden_size=backbone.hidden_size)
        trained_on = (projector.provenance or {}).get("backbone")
        if isinstance(trained_on, dict) and trained_on.get("config_sha256") not in (
            None,
            backbone.identity()["config_sha256"],
        ):
            log.warning("projector %s was trained on another configuration of %s", checkpoint, backbone.name)
    else:
        projector = Projector.identity(
            backbone=backbone.name,
            hidden_size=backbone.hidden_size,
            layer=settings.layer,
            kind=settings.projector_kind,
        )
    return AimEncoder(backbone, projector, dtype=dtype)


def projector_description(settings: Settings, encoder: AimEncoder) -> dict:
    """What ``GET /ready`` says about the projector: where it came from and how it was trained."""
    checkpoint = choose_projector(settings)
    projector = encoder.projector
    return {
        "checkpoint": str(checkpoint) if checkpoint is not None else IDENTITY_PROJECTOR,
        "trained": checkpoint is not None,
        "kind": projector.config.kind,
        "layer": projector.config.layer,
        "digest": projector.digest()[:16],
        "provenance": projector.provenance,  # training.json: objective, data, steps, fidelity; None if absent
    }


def bank_fingerprint(encoder: AimEncoder) -> str:
    return fingerprint(
        backbone=encoder.backbone.identity(),
        projector_digest=encoder.projector.digest(),
        layer=encoder.layer,
        dtype=str(encoder.dtype).removeprefix("torch."),
    )


def query_batch_size(settings: Settings, encoder: AimEncoder) -> int:
    """AIM_QUERY_BATCH_SIZE, else 8 on a GPU and 1 (no batching) on CPU: on this project's CPU a batched
    query forward was slower than the same queries in parallel threads (README, bench.batching)."""
    if settings.query_batch_size is not None:
        return settings.query_batch_size
    return 8 if encoder.backbone.device.type == "cuda" else 1


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
        async with (
            build_engine(settings, encoder.backbone) as engine,
            QueryBatcher(
                encoder,
                max_batch=query_batch_size(settings, encoder),
                max_wait_ms=settings.query_batch_wait_ms,
            ) as queries,
        ):
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
                generate=GenerateService(
                    encoder, bank, engine, settings, metrics, images, SimilarityIndex(), queries
                ),
                fingerprint=fp,
                model=ModelIdentity(
                    encoder.backbone.name,
                    encoder.projector.digest(),
                    max_model_len=engine.max_model_len,
                    created=int(time.time()),
                ),
                projector=projector_description(settings, encoder),
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
