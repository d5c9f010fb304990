"""The application config: one pydantic model, loaded from YAML at the edge; each section is defined beside
what it configures and re-exported here.

Contract: :func:`load_config` returns a validated :class:`AppConfig` or raises :class:`ConfigError` whose
message names the file and the offending field. Relative paths are resolved against the current directory
at load time, so Ray workers on the same node see absolute paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from cleanroom.policy import CleanRoomPolicy
from federation.config import FederationConfig
from serving.adapters_config import AdaptersConfig
from serving.admission_config import AdmissionConfig
from serving.config_base import ConfigError, Strict, load_yaml_model
from serving.data_config import CleanRoomConfig, CleanRoomRetailer, ComparisonConfig, GovernanceConfig
from serving.deployment_config import CPU_ENGINE_ENV, AutoscalingConfig, DeploymentConfig, HttpConfig
from serving.engines.config import BUNDLED_TEMPLATES, EngineConfig, ModelConfig, read_chat_template

__all__ = [
    "BUNDLED_TEMPLATES",
    "AdaptersConfig",
    "AdmissionConfig",
    "AppConfig",
    "AutoscalingConfig",
    "CleanRoomConfig",
    "CleanRoomRetailer",
    "ComparisonConfig",
    "ConfigError",
    "DeploymentConfig",
    "EngineConfig",
    "GovernanceConfig",
    "HttpConfig",
    "ModelConfig",
    "load_config",
    "load_yaml_model",
    "read_chat_template",
]


class AppConfig(Strict):
    """Everything ``rmn serve`` needs."""

    model: ModelConfig = Field(description="Base model.")
    adapters: AdaptersConfig = Field(description="Adapter registry.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="vLLM engine arguments.")
    engine_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(env=dict(CPU_ENGINE_ENV)),
        description="Ray Serve options of the engine deployment.",
    )
    router_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(
            max_ongoing_requests=256, max_queued_requests=256, num_cpus=0.1
        ),
        description="Ray Serve options of the OpenAI-compatible router (ingress).",
    )
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP listener.")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Admission control and fair queueing in the router."
    )
    federation: FederationConfig | None = Field(
        default=None, description="Tenants and stack policy; null serves without authentication."
    )
    cleanroom: CleanRoomConfig | None = Field(default=None, description="Clean rooms; null: none.")
    comparison: ComparisonConfig | None = Field(
        default=None, description="Planning and comparison (/v1/plans/compare); null: off."
    )

    @model_validator(mode="after")
    def _gpus_match_the_device(self) -> AppConfig:
        """Engine replicas reserve the GPUs their engine uses: on CUDA at least tensor x pipeline parallel size
        (with 0, Ray 2.60 does not hide the GPUs and every replica lands on GPU 0); on CPU none."""
        engine, reserved = self.engine, self.engine_deployment.num_gpus
        if engine.device == "cuda":
            need = engine.parallel_size
            if engine.gpu_bundles and reserved != need:
                raise ValueError(
                    f"engine_deployment.num_gpus is {reserved:g} but engine.gpu_placement is bundles with tensor x "
                    f"pipeline parallel size {need}: set it to {need} (one GPU in each worker's bundle)"
                )
            if reserved < need:
                raise ValueError(
                    f"engine_deployment.num_gpus is {reserved:g} but engine.device is cuda with "
                    f"tensor x pipeline parallel size {need}: reserve at least {need} (with fewer, replicas share "
                    "GPU 0 or wait forever)"
                )
        elif reserved > 0:
            raise ValueError(
                f"engine_deployment.num_gpus is {reserved:g} but engine.device is cpu: the GPUs would be reserved "
                "and idle (set engine.device: cuda to use them)"
            )
        return self

    @model_validator(mode="after")
    def _cleanroom_needs_tenants(self) -> AppConfig:
        if self.cleanroom is not None and self.federation is None:
            raise ValueError("cleanroom needs a federation section: clean-room queries are per tenant")
        if self.comparison is not None and self.cleanroom is None:
            raise ValueError("comparison needs a cleanroom section: one plan is made through the clean room")
        return self

    def market_policy(self) -> CleanRoomPolicy:
        """The clean-room policy of the comparison market's retailer (its configured one, else defaults)."""
        retailer = self.comparison.market.retailer if self.comparison else ""
        for r in self.cleanroom.retailers if self.cleanroom else []:
            if r.policy.retailer == retailer:
                return r.policy
        return CleanRoomPolicy(retailer=retailer)

    @field_validator("model", "adapters", mode="after")
    @classmethod
    def _absolute(cls, v: Any) -> Any:
        for name in ("path", "cache_root", "download_root"):
            if getattr(v, name, None) is not None:
                setattr(v, name, Path(getattr(v, name)).expanduser().resolve())
        return v


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Read, validate and return the app config at ``path`` (with optional top-level overrides)."""
    return load_yaml_model(path, AppConfig, overrides)
