"""Annotated dependencies: route signatures read as types."""

from __future__ import annotations

import copy
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from server.auth import Tenant, TenantDep
from server.chat.serving import ChatService
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
Service = TypeVar("Service", DemonstrationService, GenerateService)


def _for_tenant(service: Service, tenant: Tenant) -> Service:
    """The service as the tenant sees it: the same objects, with the bank in the tenant's namespace."""
    if tenant.namespace is None:
        return service
    scoped = copy.copy(service)
    scoped.bank = service.bank.in_namespace(tenant.namespace)
    return scoped


def get_demonstration_service(state: StateDep, tenant: TenantDep) -> DemonstrationService:
    return _for_tenant(state.demonstrations, tenant)


def get_generate_service(state: StateDep, tenant: TenantDep) -> GenerateService:
    return _for_tenant(state.generate, tenant)


DemonstrationServiceDep = Annotated[DemonstrationService, Depends(get_demonstration_service)]
GenerateServiceDep = Annotated[GenerateService, Depends(get_generate_service)]


def get_chat_service(state: StateDep, tenant: TenantDep) -> ChatService:
    """Chat completions over the tenant's own generation service: one path, one scoping."""
    return ChatService(_for_tenant(state.generate, tenant), state.model, state.fingerprint)


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
