from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from server.demonstrations.protocol import (
    AddToSetRequest,
    Demonstration,
    DemonstrationDeleted,
    DemonstrationSet,
    RegisterRequest,
    RegisterResponse,
    SetDeleted,
    SetItemsAdded,
    SetList,
)
from server.deps import DemonstrationServiceDep
from server.openapi import errors
from server.wire import SET_NAME_PATTERN

MAX_PAGE = 10_000
MAX_OFFSET = 10**9  # far past any set, and within the 64-bit range Redis takes for LRANGE

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


Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="how many to skip")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="how many at most")]
SetNamePath = Annotated[str, Path(pattern=SET_NAME_PATTERN)]


@router.get("/sets", response_model=SetList, responses=errors(401, 400, 503))
async def list_sets(service: DemonstrationServiceDep, offset: Offset = 0, limit: Limit = 100) -> SetList:
    """Every set of the caller's namespace with its size, in name order, a page at a time."""
    return await service.list_sets(offset=offset, limit=limit)


@router.get("/sets/{name}", response_model=DemonstrationSet, responses=errors(401, 400, 404, 503))
async def get_set(
    name: str, service: DemonstrationServiceDep, offset: Offset = 0, limit: Limit = MAX_PAGE
) -> DemonstrationSet:
    """The set's ids in registration order, a page at a time (``size`` is the whole set's)."""
    return await service.get_set(name, offset=offset, limit=limit)


@router.post("/sets/{name}/items", response_model=SetItemsAdded, responses=errors(401, 400, 404, 503))
async def add_to_set(
    name: SetNamePath, body: AddToSetRequest, service: DemonstrationServiceDep
) -> SetItemsAdded:
    """Append registered demonstrations to the set (created if new) by id, without re-encoding them."""
    return await service.add_to_set(name, body)


@router.delete("/sets/{name}", response_model=SetDeleted, responses=errors(401, 404, 503))
async def delete_set(name: str, service: DemonstrationServiceDep) -> SetDeleted:
    """Delete the set; its demonstrations stay."""
    return await service.delete_set(name)
