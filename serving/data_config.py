"""The ``cleanroom`` and ``comparison`` sections: retailers' clean rooms, the market, the planner and
comparison deployments, and the rules the composed adapters' ad lines are checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from cleanroom.policy import CleanRoomPolicy
from planning.governance import CLAIM_CLASSES, ClaimClass, GovernancePolicy
from planning.market import MarketConfig
from serving.config_base import Strict
from serving.deployment_config import DeploymentConfig


class CleanRoomRetailer(Strict):
    """One retailer's clean room."""

    db_path: Path = Field(description="DuckDB file with the retailer's events (`rmn cleanroom load`).")
    policy: CleanRoomPolicy = Field(description="What tenants may ask of this retailer's data.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for attached object-store files (e.g. {endpoint_url: ...}); "
        "credentials from the environment as s3fs reads them.",
    )
    memory_limit: str | None = Field(
        default=None,
        description="DuckDB's memory limit for this room (e.g. '4GB'; it spills to disk beyond); null: "
        "DuckDB's default (80 % of RAM).",
    )

    @field_validator("db_path", mode="after")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()


class CleanRoomConfig(Strict):
    """Clean rooms served at /v1/cleanroom/* (needs `federation`: queries are per tenant)."""

    retailers: list[CleanRoomRetailer] = Field(min_length=1, description="One entry per retailer.")
    state_dir: Path | None = Field(
        default=None,
        description="Durable state of the comparison's market rooms (their epsilon ledgers, releases, "
        "audit; keyed by retailer and seed); null: `rmn-state/` next to the first retailer's DuckDB file. "
        "Never a temp dir: budgets must survive restarts and rebuilds.",
    )

    def state_root(self) -> Path:
        """Where durable clean-room state lives on the clean-room replica's node."""
        root = self.state_dir or self.retailers[0].db_path.parent / "rmn-state"
        return root.expanduser().resolve()

    deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(num_cpus=0.25),
        description="Ray Serve options (keep 1 replica).",
    )


class GovernanceConfig(Strict):
    """Brand safety for ad lines: the deployment's policy (its fields here) and what each retailer and brand
    adds to it (stricter wins). Each line gets a verdict: ``rejected`` (a blocked claim class, a banned word,
    a competitor, a length), ``pending`` (for a reviewer: a format problem or a claim only the model sees) or
    ``ok``."""

    blocked_claims: list[ClaimClass] = Field(
        default_factory=lambda: list(CLAIM_CLASSES),
        description="Claim classes a line may not make: health, superlative, comparative, price_guarantee, "
        "sensitive_audience.",
    )
    banned_words: list[str] = Field(
        default_factory=list,
        description="Words or phrases a line may not contain (case-insensitive, at word boundaries).",
    )
    competitors: list[str] = Field(
        default_factory=list, description="Competitors' names: a line naming one is a comparative claim."
    )
    max_chars: int = Field(default=90, gt=0, description="Longest allowed ad line.")
    min_chars: int = Field(default=10, ge=0, description="Shortest allowed ad line.")
    model_check: bool = Field(
        default=False,
        description="Also ask the base model (guided JSON) which claim classes a line makes: a class only the "
        "model finds sends the line to a reviewer (`pending`); rules still decide rejections. One short "
        "generation per line; its measured value is in bench/results/governance.json.",
    )
    retailers: dict[str, GovernancePolicy] = Field(
        default_factory=dict,
        description="Retailer id -> what its policy adds for lines shown on its network.",
    )
    brands: dict[str, GovernancePolicy] = Field(
        default_factory=dict, description="Brand (manufacturer tenant id) -> what its policy adds."
    )

    def policy(self, retailer: str | None = None, brand: str | None = None) -> GovernancePolicy:
        """The policy for a line of ``brand`` on ``retailer``'s network."""
        base = GovernancePolicy(
            blocked_claims=self.blocked_claims,
            banned_words=self.banned_words,
            competitors=self.competitors,
            max_chars=self.max_chars,
            min_chars=self.min_chars,
        )
        return base.merged(self.retailers.get(retailer or ""), self.brands.get(brand or ""))


class ComparisonConfig(Strict):
    """`POST /v1/plans/compare` (needs `federation` and `cleanroom`): the simulated market, the planner and
    comparison deployments, and the text the composed adapters write."""

    market: MarketConfig = Field(
        default_factory=MarketConfig, description="The synthetic market (seed, sizes)."
    )
    planner_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(num_replicas=2, num_cpus=0.1),
        description="Ray Serve options of the planner (2 replicas: the two plans run side by side).",
    )
    comparison_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(num_cpus=0.1),
        description="Ray Serve options of the comparison deployment.",
    )
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig, description="Ad-line rules.")
    max_upload_bytes: int = Field(
        default=16 << 20,
        gt=0,
        description="Largest body `POST /v1/plans/files` accepts (a brand's products, sales and media files): "
        "413 above it, checked before anything is read.",
    )
    rationale_max_tokens: int = Field(default=160, gt=0, le=4096, description="Tokens of the JSON rationale.")
    creative_max_tokens: int = Field(default=40, gt=0, le=1024, description="Tokens per ad line.")
