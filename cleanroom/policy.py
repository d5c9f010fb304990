"""A retailer's clean-room policy (YAML, pydantic-validated)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cleanroom.schema import EVENT_COLUMNS, METRICS, NUMERIC_COLUMNS

FilterOp = Literal["eq", "in"]
_TEXT_FILTERS: dict[str, list[FilterOp]] = {
    c: ["eq", "in"] for c in ("brand", "category", "placement", "sku")
}


class DPPolicy(BaseModel):
    """Differential privacy for a retailer's clean room (Laplace noise through OpenDP).

    Each shopper's contribution is bounded before noise: at most ``max_cells_per_shopper`` cells, and in
    each cell each metric clamped to ``[0, metric_bounds[metric]]``. A query's epsilon goes
    ``count_share`` to the distinct-shopper count (on which k is applied, and which decides which cells
    exist) and the rest evenly to the metrics. The data owner sets the noise: a querier may ask for more
    epsilon up to ``max_epsilon_per_query``, never less than ``min_epsilon_per_query``; every charge is
    rounded UP to a whole micro-epsilon and recorded in integers, so no charge can vanish.
    """

    model_config = ConfigDict(extra="forbid")

    epsilon_per_query: float = Field(
        default=1.0, gt=0, le=10, allow_inf_nan=False, description="Epsilon a query spends by default."
    )
    min_epsilon_per_query: float = Field(
        default=0.25,
        ge=0.001,
        le=10,
        allow_inf_nan=False,
        description="Floor: a query asking for less is refused (400); no charge is ever below it.",
    )
    max_epsilon_per_query: float = Field(
        default=2.0, gt=0, le=10, allow_inf_nan=False, description="Largest epsilon one query may ask for."
    )
    epsilon_budget: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="Total epsilon per tenant (persisted ledger)."
    )
    room_epsilon_budget: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="Total epsilon of the room, all tenants together (colluding tenants share it).",
    )
    budget_refresh_days: int | None = Field(
        default=None,
        ge=1,
        description="Budgets start afresh every this many days (UTC, from 1970-01-01); null: never.",
    )
    count_share: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Share of a query's epsilon spent on the distinct-shopper count (the rest: metrics).",
    )
    max_delta_per_query: float = Field(
        default=1e-6,
        gt=0,
        le=1e-3,
        description="Largest delta a grouped query may spend: the chance that a cell one shopper alone "
        "creates passes the noisy k threshold (refused above it: ask for more epsilon).",
    )
    max_cells_per_shopper: int = Field(
        default=2, ge=1, le=1000, description="Cells one shopper may contribute to per query (L)."
    )
    metric_bounds: dict[str, float] = Field(
        default_factory=lambda: {
            "impressions": 50.0,
            "clicks": 10.0,
            "purchases": 5.0,
            "units": 10.0,
            "revenue": 200.0,
            "spend": 20.0,
        },
        description="Per shopper and cell, the most each metric may contribute (values are clamped).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DPPolicy:
        if not self.min_epsilon_per_query <= self.epsilon_per_query <= self.max_epsilon_per_query:
            raise ValueError("need min_epsilon_per_query <= epsilon_per_query <= max_epsilon_per_query")
        if self.max_epsilon_per_query > self.epsilon_budget:
            raise ValueError("max_epsilon_per_query is above epsilon_budget")
        if self.epsilon_budget > self.room_epsilon_budget:
            raise ValueError("epsilon_budget (per tenant) is above room_epsilon_budget (all tenants)")
        unknown = set(self.metric_bounds) - set(METRICS)
        if unknown:
            raise ValueError(f"metric_bounds: unknown metrics {sorted(unknown)}")
        bad = [m for m, b in self.metric_bounds.items() if not (0 < b < 1e12)]  # NaN fails too
        if bad:
            raise ValueError(f"metric_bounds must be positive and finite: {bad}")
        return self


class BenchmarkPolicy(BaseModel):
    """Category-level benchmarks across brands for brand-scoped tenants (``"scope": "benchmark"``)."""

    model_config = ConfigDict(extra="forbid")

    dimensions: list[str] = Field(
        default_factory=lambda: ["category"],
        description="The only dimensions a benchmark query may group by (never brand or sku).",
    )
    k_factor: int = Field(
        default=2, ge=1, le=100, description="A benchmark cell needs k * k_factor shoppers."
    )
    filterable: list[str] = Field(
        default_factory=lambda: ["category", "placement"],
        description="Columns a benchmark query may filter on (never brand or sku).",
    )


class CleanRoomPolicy(BaseModel):
    """What tenants may ask of one retailer's data."""

    model_config = ConfigDict(extra="forbid")

    retailer: str = Field(description="Retailer whose data this policy governs.")
    identity_column: str = Field(
        default="shopper_id", description="Column identifying a person; never output."
    )
    k: int = Field(default=100, ge=2, description="Minimum DISTINCT shoppers behind every released cell.")
    allowed_dimensions: list[str] = Field(
        default_factory=lambda: ["event_date", "sku", "brand", "category", "placement"],
        description="Columns a query may group by.",
    )
    allowed_metrics: list[str] = Field(
        default_factory=lambda: ["impressions", "clicks", "purchases", "units", "revenue", "spend"],
        description="Metric names a query may ask for (each a fixed SQL aggregate).",
    )
    blocked_fields: list[str] = Field(
        default_factory=lambda: ["margin", "stock_level", "promo_flag"],
        description="Columns never grouped, filtered or output; requests for them are reported.",
    )
    filterable: dict[str, list[FilterOp]] = Field(
        default_factory=lambda: {c: list(ops) for c, ops in _TEXT_FILTERS.items()},
        description="Columns a query may filter on, with the operators allowed.",
    )
    max_groups: int = Field(default=1000, gt=0, description="Largest number of cells one query may produce.")
    queries_per_minute: int = Field(
        default=60, gt=0, description="Per-tenant query rate (token bucket; above it: refused, HTTP 429)."
    )
    mode: Literal["dp", "exact"] = Field(
        default="dp",
        description="dp: noisy answers under a privacy budget (the default, the safe mode); exact: exact "
        "aggregates, for trusted partners only (`trusted_tenants`).",
    )
    dp: DPPolicy = Field(default_factory=DPPolicy, description="Differential privacy settings (mode dp).")
    trusted_tenants: list[str] = Field(
        default_factory=list,
        description="Mode exact: the only tenants who may query (trusted partners under contract); "
        "everyone else is refused (403).",
    )
    attach_files: bool = Field(
        default=False,
        description="Allow `rmn cleanroom attach`: Parquet files (local or object store, partitioned by "
        "date or not) queried where they lie, each file's sha256 recorded and re-checked, instead of copied "
        "into the room's DuckDB file. Off: data is only loaded (copied).",
    )
    report_suppressed_cells: bool = Field(
        default=False,
        description="Mode exact: tell trusted partners how many cells were withheld below k (an exact count "
        "of the data); off: `suppressed_cells` is null. Mode dp never reports it.",
    )
    brand_owners: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Tenant id -> the brands whose rows it may see. Not listed: a manufacturer tenant "
        "sees the brand named like its tenant id, the retailer's own tenants and admins see all rows, "
        "anyone else nothing.",
    )
    unscoped_tenants: list[str] = Field(
        default_factory=list,
        description="Tenants (besides admins and the retailer's own) who see every brand.",
    )
    benchmark: BenchmarkPolicy | None = Field(
        default=None, description="Cross-brand category benchmarks for brand-scoped tenants; null: none."
    )
    value_bounds: dict[str, float] = Field(
        default_factory=lambda: {
            "quantity": 10_000.0,
            "revenue": 10_000_000.0,
            "cost": 10_000_000.0,
            "margin": 10_000_000.0,
            "stock_level": 1_000_000_000.0,
        },
        description="Largest value one row may carry per numeric column; a file with a larger one is "
        "refused (nothing loaded), so no sum can overflow.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_null_dp(cls, data: object) -> object:
        if isinstance(data, dict) and "dp" in data and data["dp"] is None:
            raise ValueError(
                "dp: null no longer means exact aggregates: set `mode: exact` (trusted partners only) "
                "and list them in `trusted_tenants`"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CleanRoomPolicy:
        if self.mode == "exact" and not self.trusted_tenants:
            raise ValueError("mode exact needs trusted_tenants (exact answers are for trusted partners only)")
        for col, bound in self.value_bounds.items():
            if col not in NUMERIC_COLUMNS:
                raise ValueError(f"value_bounds: {col!r} is not a numeric column {list(NUMERIC_COLUMNS)}")
            if not 0 < bound <= 1e15:
                raise ValueError(f"value_bounds.{col} must be in (0, 1e15]")
        if self.benchmark is not None:
            for name in [*self.benchmark.dimensions, *self.benchmark.filterable]:
                if name in ("brand", "sku") or name not in self.allowed_dimensions + list(self.filterable):
                    raise ValueError(f"benchmark: {name!r} is not a coarse, allowed column")
        known = set(EVENT_COLUMNS)
        for name in [*self.allowed_dimensions, *self.blocked_fields, *self.filterable, self.identity_column]:
            if name not in known:
                raise ValueError(f"unknown column {name!r} (schema columns: {sorted(known)})")
        unknown_metrics = set(self.allowed_metrics) - set(METRICS)
        if unknown_metrics:
            raise ValueError(f"unknown metrics {sorted(unknown_metrics)} (known: {sorted(METRICS)})")
        exposed = {*self.allowed_dimensions, *self.filterable}
        for sensitive in (self.identity_column, *self.blocked_fields):
            if sensitive in exposed:
                raise ValueError(
                    f"{sensitive!r} is the identity column or blocked, it cannot be a dimension or filter"
                )
        return self

    @property
    def dp_on(self) -> bool:
        """True in mode dp (noisy answers, budgets)."""
        return self.mode == "dp"

    def brand_scope(
        self,
        tenant: str,
        role: str | None = None,
        retailer: str | None = None,
        manufacturer: str | None = None,
    ) -> frozenset[str] | None:
        """The brands ``tenant`` may see: None for every brand, an empty set for none. ``role``,
        ``retailer`` and ``manufacturer`` are the federation tenant's (role None: a local caller such as
        the CLI, which must be declared in this policy). Rules, first match: ``brand_owners``;
        ``unscoped_tenants`` and admins: all; a retailer tenant of this room's retailer (by tenant id or
        its retailer field): all; a manufacturer: the brand named like its tenant id (the id
        ``/v1/plans/compare`` plans for); anyone else: none. ``manufacturer`` is accepted for callers
        that have it, but an adapter id is not a brand name: map brands in ``brand_owners``."""
        if tenant in self.brand_owners:
            return frozenset(self.brand_owners[tenant])
        if tenant in self.unscoped_tenants or role == "admin":
            return None
        if role == "retailer" and self.retailer.split("@", 1)[0] in (tenant, retailer):
            return None
        if role == "manufacturer":
            return frozenset({tenant})
        return frozenset()

    def declares(self, tenant: str) -> bool:
        """Whether this policy names ``tenant`` (brand_owners, unscoped_tenants or trusted_tenants)."""
        return (
            tenant in self.brand_owners or tenant in self.unscoped_tenants or tenant in self.trusted_tenants
        )
