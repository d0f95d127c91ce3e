"""API keys: ``Authorization: Bearer KEY`` on every route but ``/health``, each key a tenant.

A tenant's demonstrations and sets live in its own namespace of the bank, so another tenant's id or set
name is simply not found (404): nothing says that it exists elsewhere. Without keys configured every
request is the anonymous tenant (the shared namespace), which ``Settings`` allows only on loopback
addresses unless ``AIM_ALLOW_UNAUTHENTICATED`` says otherwise.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from server.errors import APIError
from server.settings import Settings

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ADMIN = "admin"


class AuthenticationError(APIError):
    status_code = 401
    type = "authentication_error"
    headers = {"WWW-Authenticate": "Bearer"}


class ApiKeyConfigError(ValueError):
    """The configured keys are unusable; the server refuses to start rather than guess."""


@dataclass(frozen=True)
class Tenant:
    name: str | None  # None: no keys configured, the shared namespace
    admin: bool = False

    @property
    def namespace(self) -> str | None:
        """Where its demonstrations live in the bank; the admin works in the shared namespace."""
        return None if self.admin else self.name


ANONYMOUS = Tenant(None)


class ApiKeys:
    def __init__(self, keys: dict[str, str], admin_key: str | None) -> None:
        self._keys = [(key.encode(), Tenant(name)) for name, key in keys.items()]
        if admin_key:
            self._keys.append((admin_key.encode(), Tenant(ADMIN, admin=True)))
        seen: set[bytes] = set()
        for key, _ in self._keys:
            if key in seen:
                raise ApiKeyConfigError("two tenants share one API key")
            seen.add(key)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant(self, presented: str) -> Tenant | None:
        # Compare against every key, in constant time each, so timing says nothing about which matched.
        found = None
        for key, tenant in self._keys:
            if hmac.compare_digest(key, presented.encode()):
                found = tenant
        return found

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        pairs: list[str] = []
        if settings.api_keys is not None:
            pairs += settings.api_keys.get_secret_value().split(",")
        if settings.api_keys_file is not None:
            pairs += Path(settings.api_keys_file).read_text().splitlines()
        keys: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in pairs)):
            name, sep, key = pair.partition("=")
            name, key = name.strip(), key.strip()
            if not sep or not TENANT_PATTERN.match(name) or len(key) < 16:
                raise ApiKeyConfigError(
                    "API keys are 'tenant=key' with a tenant name of letters, digits, '_' or '-' and a key "
                    f"of at least 16 characters; got an entry for {name!r}"
                )
            if name in keys or name == ADMIN:
                raise ApiKeyConfigError(f"tenant {name!r} is given twice or is reserved")
            keys[name] = key
        admin = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
        if admin is not None and len(admin) < 16:
            raise ApiKeyConfigError("the admin API key must have at least 16 characters")
        return cls(keys, admin)


def get_tenant(request: Request) -> Tenant:
    keys: ApiKeys = request.app.state.api_keys
    if not keys.enabled:
        return ANONYMOUS
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "missing API key: send 'Authorization: Bearer KEY'", param="Authorization", code="missing_api_key"
        )
    tenant = keys.tenant(token.strip())
    if tenant is None:
        raise AuthenticationError("invalid API key", param="Authorization", code="invalid_api_key")
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]
