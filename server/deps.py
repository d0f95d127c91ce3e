"""Annotated dependencies: route signatures read as types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.demonstrations.serving import DemonstrationService
from server.errors import ServiceUnavailableError
from server.generate.serving import GenerateService
from server.state import AppState


def get_state(request: Request) -> AppState:
    state = getattr(request.app.state, "aim", None)
    if state is None:
        raise ServiceUnavailableError("the server is still starting", code="not_ready")
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_demonstration_service(state: StateDep) -> DemonstrationService:
    return state.demonstrations


def get_generate_service(state: StateDep) -> GenerateService:
    return state.generate


DemonstrationServiceDep = Annotated[DemonstrationService, Depends(get_demonstration_service)]
GenerateServiceDep = Annotated[GenerateService, Depends(get_generate_service)]
