"""Tenants, their API keys (stored only as sha256 hashes) and what they may compose.

Contract: :meth:`TenantDirectory.authenticate` maps an ``Authorization`` header to a :class:`Tenant`
or raises :class:`AuthError`; :func:`check_access` raises :class:`Forbidden` naming the first private
component the tenant may not use. Pure Python: no Ray, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from adapters.manifest import AdapterKind
from federation.errors import FederationError, PermissionDenied


class KeySource(Protocol):
    """Where the key hashes come from when they may change at run time (:class:`federation.keys.KeyFile`)."""

    def load(self) -> dict[str, tuple[str, ...]]: ...

    def poll(self) -> dict[str, tuple[str, ...]] | None: ...


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
    reviewer = "reviewer"  # decides ad lines brand safety could not clear (the review queue)
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
    role: Role = Field(description="retailer | manufacturer | agency | reviewer | admin.")
    api_key_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the API key (`rmn tenants hash-key`); null when federation.keys_file holds "
        "the tenant's keys.",
    )
    retailer: str | None = Field(
        default=None, description="Retailer adapter used by default (implicit stacks)."
    )
    manufacturer: str | None = Field(default=None, description="Manufacturer adapter used by default.")
    grants: list[str] = Field(
        default_factory=list, description="Private adapters (ids) this tenant may also use."
    )
    rate_limit_per_minute: int = Field(
        default=600,
        gt=0,
        description="Requests per minute, for the whole cluster (admission.cluster_wide; else per router replica).",
    )
    default_task: str | None = Field(
        default=None,
        description="Task (name or task adapter id) of this tenant's implicit stacks when the request names "
        "none and the classifier is unsure (before the policy's default_task).",
    )
    layer_weights: dict[AdapterKind, float] = Field(
        default_factory=dict,
        description="This tenant's default weight per layer (over the policy's weights; a request's "
        "federation.weights override), each in (0, 10].",
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
    """Tenants by key hash. ``keys``: a source of hashes by tenant id that may change while the router runs
    (:class:`federation.keys.KeyFile`); without it, each tenant's ``api_key_sha256``."""

    def __init__(self, tenants: list[Tenant], keys: KeySource | None = None) -> None:
        self.tenants = {t.id: t for t in tenants}
        if len(self.tenants) != len(tenants):
            raise ValueError("two tenants share one id")
        self._keys = keys
        inline: dict[str, tuple[str, ...]] = {t.id: (t.api_key_sha256,) for t in tenants if t.api_key_sha256}
        self._by_hash = self._index(keys.load() if keys else inline)

    def _index(self, hashes: dict[str, tuple[str, ...]]) -> dict[str, Tenant]:
        by_hash: dict[str, Tenant] = {}
        for tenant_id, digests in hashes.items():
            for digest in digests:
                if by_hash.setdefault(digest, self.tenants[tenant_id]).id != tenant_id:
                    raise ValueError("two tenants share one API key")
        return by_hash

    def authenticate(self, authorization: str | None) -> Tenant:
        """The tenant for ``Authorization: Bearer <key>``; raises AuthError."""
        if not authorization:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("malformed Authorization header: expected 'Bearer <key>'")
        if self._keys is not None and (fresh := self._keys.poll()) is not None:
            self._by_hash = self._index(fresh)
        digest = hash_key(key.strip())
        for known, tenant in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise AuthError("invalid API key")
