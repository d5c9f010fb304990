"""Tenants, their API keys (stored only as sha256 hashes) and what they may compose.

Contract: :meth:`TenantDirectory.authenticate` maps an ``Authorization`` header to a :class:`Tenant`
or raises :class:`AuthError`; :func:`check_access` raises :class:`Forbidden` naming the first private
component the tenant may not use. Pure Python: no Ray, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from federation.errors import FederationError, PermissionDenied


class AuthError(FederationError):
    """Missing or invalid API key."""


class Forbidden(PermissionDenied):
    """The tenant may not use a component; ``component`` names it."""

    def __init__(self, message: str, component: str) -> None:
        super().__init__(message)
        self.component = component

    def __reduce__(self) -> tuple[type[Forbidden], tuple[str, str]]:
        return (type(self), (str(self), self.component))


class Role(StrEnum):
    """What a tenant is to the network."""

    retailer = "retailer"
    manufacturer = "manufacturer"
    agency = "agency"
    admin = "admin"


def hash_key(api_key: str) -> str:
    """The sha256 hex digest stored in config instead of the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class Tenant(BaseModel):
    """One tenant of the federation router."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$", description="Tenant id; owners of adapters use it."
    )
    role: Role = Field(description="retailer | manufacturer | agency | admin.")
    api_key_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 of the API key (`rmn tenants hash-key`)."
    )
    retailer: str | None = Field(
        default=None, description="Retailer adapter used by default (implicit stacks)."
    )
    manufacturer: str | None = Field(default=None, description="Manufacturer adapter used by default.")
    grants: list[str] = Field(
        default_factory=list, description="Private adapters (ids) this tenant may also use."
    )
    rate_limit_per_minute: int = Field(
        default=600, gt=0, description="Requests per minute (per router replica)."
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Share of the engines under contention (fair queueing): a tenant of weight 2 gets twice "
        "the slots of a tenant of weight 1 while both wait.",
    )

    def may_use(self, adapter_id: str, owner: str, private: bool) -> bool:
        """True when the tenant may compose adapter ``adapter_id`` owned by ``owner``."""
        return not private or self.role == Role.admin or owner == self.id or adapter_id in self.grants


class TenantDirectory:
    """Tenants by key hash."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self._by_hash = {t.api_key_sha256: t for t in tenants}
        if len(self._by_hash) != len(tenants):
            raise ValueError("two tenants share one API key")
        self.tenants = {t.id: t for t in tenants}

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant for ``Authorization: Bearer <key>``; raises AuthError."""
        if not authorization:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("malformed Authorization header: expected 'Bearer <key>'")
        digest = hash_key(key.strip())
        for known, tenant in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise AuthError("invalid API key")
