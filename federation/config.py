"""The federation section of the app config: tenants, the stack policy, the audit log, metric labels."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from federation.policy import FederationPolicy
from federation.tenants import Tenant


class FederationConfig(BaseModel):
    """Tenants, API keys (hashes), grants and the stack policy. Absent: an open API without tenants."""

    model_config = ConfigDict(extra="forbid")

    tenants: list[Tenant] = Field(
        min_length=1, description="Who may call the API, with what key hash and grants."
    )
    policy: FederationPolicy = Field(default_factory=FederationPolicy, description="How stacks are built.")
    audit_log: Path | None = Field(
        default=None,
        description="JSON-lines file of composition decisions (per router node); null: logs only.",
    )
    metrics_top_n: int = Field(
        default=20, gt=0, description="Compositions with their own metrics label; later ones are 'other'."
    )

    @field_validator("audit_log", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().resolve()
