"""Everything the routes need, built once in the lifespan and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field

from bank import DemonstrationBank, RedisConnection
from projector.encoder import AimEncoder
from server.chat.serving import ModelIdentity
from server.demonstrations.serving import DemonstrationService
from server.engines.base import Engine
from server.generate.serving import GenerateService
from server.metrics import Metrics
from server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    encoder: AimEncoder
    bank: DemonstrationBank
    redis: RedisConnection
    engine: Engine
    metrics: Metrics
    demonstrations: DemonstrationService
    generate: GenerateService
    fingerprint: str
    model: ModelIdentity  # what /v1/models lists and chat requests may name
    projector: dict = field(default_factory=dict)  # GET /ready: checkpoint, kind, layer, provenance
