from __future__ import annotations

from fastapi import APIRouter

from server.demonstrations.protocol import (
    Demonstration,
    DemonstrationDeleted,
    DemonstrationSet,
    RegisterRequest,
    RegisterResponse,
    SetDeleted,
)
from server.deps import DemonstrationServiceDep
from server.openapi import errors

router = APIRouter(tags=["demonstrations"])


@router.post("/demonstrations", response_model=RegisterResponse, responses=errors(401, 400, 413, 503))
async def register(body: RegisterRequest, service: DemonstrationServiceDep) -> RegisterResponse:
    """Encode each demonstration once (frozen MLLM + projector) and store its fused tokens."""
    return await service.register(body)


@router.get(
    "/demonstrations/{demonstration_id}", response_model=Demonstration, responses=errors(401, 404, 503)
)
async def get_demonstration(demonstration_id: str, service: DemonstrationServiceDep) -> Demonstration:
    return await service.get(demonstration_id)


@router.delete(
    "/demonstrations/{demonstration_id}", response_model=DemonstrationDeleted, responses=errors(401, 404, 503)
)
async def delete_demonstration(
    demonstration_id: str, service: DemonstrationServiceDep
) -> DemonstrationDeleted:
    """Delete it and remove it from every set."""
    return await service.delete(demonstration_id)


@router.get("/sets/{name}", response_model=DemonstrationSet, responses=errors(401, 404, 503))
async def get_set(name: str, service: DemonstrationServiceDep) -> DemonstrationSet:
    return await service.get_set(name)


@router.delete("/sets/{name}", response_model=SetDeleted, responses=errors(401, 404, 503))
async def delete_set(name: str, service: DemonstrationServiceDep) -> SetDeleted:
    """Delete the set; its demonstrations stay."""
    return await service.delete_set(name)
