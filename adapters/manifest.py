"""The adapter manifest: what an adapter is, who owns it, and what its weights hash to."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from adapters.errors import InvalidAdapter

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
RESERVED_IDS = frozenset({"auto"})
_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){0,2}$")


def validate_adapter_id(adapter_id: str) -> str:
    """Return ``adapter_id`` if it is 1-64 chars of ``[a-z0-9_-]`` starting alphanumeric, else raise.

    Ids name directories in the store, so path separators, ``..`` and odd characters are refused.
    """
    if not isinstance(adapter_id, str) or not _ID_RE.fullmatch(adapter_id):
        raise InvalidAdapter(
            f"invalid adapter id {adapter_id!r}: use 1-64 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    if adapter_id in RESERVED_IDS:
        raise InvalidAdapter(
            f"adapter id {adapter_id!r} is reserved (model 'base:auto' asks for an implicit stack)"
        )
    return adapter_id


def validate_version(version: str) -> str:
    """Return ``version`` if it looks like ``1``, ``1.2`` or ``1.2.3``, else raise."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise InvalidAdapter(f"invalid adapter version {version!r}: use digits like '1', '1.2' or '1.2.3'")
    return version


def version_key(version: str) -> tuple[int, ...]:
    """Sort key for versions (numeric, so '1.10' > '1.9')."""
    return tuple(int(p) for p in version.split("."))


class AdapterKind(StrEnum):
    """Where an adapter sits in a federation stack."""

    industry = "industry"
    retailer = "retailer"
    manufacturer = "manufacturer"
    task = "task"


LAYER_ORDER: tuple[AdapterKind, ...] = tuple(AdapterKind)
"""The stack order (industry -> retailer -> manufacturer -> task): the one definition of it."""


class Visibility(StrEnum):
    """Public adapters serve anyone; private ones only their owner and grantees."""

    public = "public"
    private = "private"


class AdapterManifest(BaseModel):
    """Metadata stored beside an adapter's PEFT files (``manifest.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Adapter id, [a-z0-9_-], unique in the registry.")
    version: str = Field(default="1", description="Version; a new version never overwrites an old one.")
    kind: AdapterKind = Field(description="industry | retailer | manufacturer | task.")
    owner: str = Field(description="Tenant that owns the adapter.")
    visibility: Visibility = Field(default=Visibility.public, description="public | private.")
    base_model: str = Field(description="Name of the base model the adapter was trained on.")
    base_model_revision: str = Field(description="Content hash of the base model weights it was trained on.")
    rank: int = Field(gt=0, description="LoRA rank r.")
    alpha: float = Field(gt=0, description="LoRA alpha; the delta is scaled by alpha / r.")
    target_modules: list[str] = Field(description="Module names the adapter modifies (e.g. q_proj, v_proj).")
    capabilities: list[str] = Field(default_factory=list, description="Free-form tags (e.g. planning, tone).")
    description: str = Field(default="", description="One line for humans.")
    sha256: str = Field(description="sha256 of adapter_model.safetensors.")
    config_sha256: str | None = Field(
        default=None,
        description="sha256 of adapter_config.json (set at registration; null in manifests of 0.1).",
    )
    created: float | None = Field(
        default=None, description="When the version was registered (seconds since the epoch; null in 0.1)."
    )

    def model_post_init(self, __context: object) -> None:
        validate_adapter_id(self.id)
        validate_version(self.version)
