"""The federation section of the app config: tenants, the stack policy, the audit log, metric labels."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from federation.policy import FederationPolicy
from federation.tenants import Tenant, TenantDirectory


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
    keys_file: Path | None = Field(
        default=None,
        description="YAML/JSON file of the tenants' key hashes (tenant id -> sha256 or a list of them), e.g. a "
        "mounted Kubernetes Secret; re-read when it changes (no restart to rotate a key). When set, tenants "
        "carry no api_key_sha256.",
    )
    keys_reload_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often the router looks for a changed keys_file (seconds).",
    )
    metrics_top_n: int = Field(
        default=20, gt=0, description="Compositions with their own metrics label; later ones are 'other'."
    )

    @field_validator("audit_log", "keys_file", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().resolve()

    @model_validator(mode="after")
    def _one_key_source(self) -> FederationConfig:
        inline = [t.id for t in self.tenants if t.api_key_sha256]
        if self.keys_file is not None and inline:
            raise ValueError(
                f"tenants {inline} carry api_key_sha256 while keys_file is set: keep every key in keys_file"
            )
        missing = [t.id for t in self.tenants if not t.api_key_sha256]
        if self.keys_file is None and missing:
            raise ValueError(f"tenants {missing} have no api_key_sha256 (or set federation.keys_file)")
        return self

    def directory(self) -> TenantDirectory:
        """The tenants by key; with ``keys_file``, re-read on change (raises KeyFileError when unreadable)."""
        from federation.keys import KeyFile

        ids = [t.id for t in self.tenants]
        keys = None if self.keys_file is None else KeyFile(self.keys_file, ids, self.keys_reload_s)
        return TenantDirectory(self.tenants, keys)
