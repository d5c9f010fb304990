"""A retailer's clean-room policy (YAML, pydantic-validated)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cleanroom.schema import EVENT_COLUMNS, METRICS

FilterOp = Literal["eq", "in"]
_TEXT_FILTERS: dict[str, list[FilterOp]] = {
    c: ["eq", "in"] for c in ("brand", "category", "placement", "sku")
}


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
