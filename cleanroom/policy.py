"""A retailer's clean-room policy (YAML, pydantic-validated)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cleanroom.schema import EVENT_COLUMNS, METRICS

FilterOp = Literal["eq", "in"]
_TEXT_FILTERS: dict[str, list[FilterOp]] = {
    c: ["eq", "in"] for c in ("brand", "category", "placement", "sku")
}


class DPPolicy(BaseModel):
    """Differential privacy for a retailer's clean room (Laplace noise through OpenDP).

    Each shopper's contribution is bounded before noise: at most ``max_cells_per_shopper`` cells, and in
    each cell each metric clamped to ``[0, metric_bounds[metric]]``. A query's epsilon is split evenly
    between the distinct-shopper count (on which k is applied) and each metric.
    """

    model_config = ConfigDict(extra="forbid")

    epsilon_per_query: float = Field(
        default=0.5, gt=0, le=10, allow_inf_nan=False, description="Epsilon a query spends by default."
    )
    max_epsilon_per_query: float = Field(
        default=2.0, gt=0, le=10, allow_inf_nan=False, description="Largest epsilon one query may ask for."
    )
    epsilon_budget: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="Total epsilon per tenant (persisted ledger)."
    )
    max_cells_per_shopper: int = Field(
        default=4, ge=1, le=1000, description="Cells one shopper may contribute to per query (L)."
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
        if self.epsilon_per_query > self.max_epsilon_per_query:
            raise ValueError("epsilon_per_query is above max_epsilon_per_query")
        if self.max_epsilon_per_query > self.epsilon_budget:
            raise ValueError("max_epsilon_per_query is above epsilon_budget")
        unknown = set(self.metric_bounds) - set(METRICS)
        if unknown:
            raise ValueError(f"metric_bounds: unknown metrics {sorted(unknown)}")
        bad = [m for m, b in self.metric_bounds.items() if not (0 < b < 1e12)]  # NaN fails too
        if bad:
            raise ValueError(f"metric_bounds must be positive and finite: {bad}")
        return self


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
    dp: DPPolicy | None = Field(default=None, description="Differential privacy; null: exact aggregates.")

    @model_validator(mode="after")
    def _consistent(self) -> CleanRoomPolicy:
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
