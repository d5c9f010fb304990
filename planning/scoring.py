"""Scoring a plan against the market's ground truth (which no planner receives).

For each cell the TRUE incremental revenue of its period spend comes from the true curve; each SKU's
incremental units are capped at its true stock headroom (sales beyond stock cannot happen, the revenue
is scaled down). Reported: spend, incremental revenue, iROAS, profit (margin x incremental revenue -
spend), SKUs covered (spend > $1), the planner's forecast error against the truth (WAPE and bias) and
spend on SKUs with no stock headroom.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, Field

from planning.market import Market
from planning.planner import Plan


class Score(BaseModel):
    """A plan's measured outcome on the ground truth."""

    spend: float = Field(description="Total period spend ($).")
    incremental_revenue: float = Field(description="TRUE incremental revenue ($), stock-capped.")
    iroas: float = Field(description="incremental_revenue / spend.")
    profit: float = Field(description="sum(margin x incremental revenue) - spend ($).")
    skus_covered: int = Field(description="SKUs with more than $1 of spend.")
    forecast_wape: float = Field(description="sum|predicted - true| / sum(true), over the plan's cells.")
    forecast_bias: float = Field(description="sum(predicted - true) / sum(true); > 0: over-forecast.")
    spend_out_of_stock: float = Field(description="Spend on SKUs with no stock headroom ($).")


def cap_at_stock(
    revenue: dict[tuple[str, str], float], price: Callable[[str], float], headroom: Callable[[str], float]
) -> dict[tuple[str, str], float]:
    """``revenue`` per (SKU, placement) with each SKU's cells scaled down together so that its incremental units
    (revenue / ``price(sku)``) fit ``headroom(sku)`` units (none below 0): sales beyond stock cannot happen."""
    units: dict[str, float] = {}
    for (sku, _), r in revenue.items():
        units[sku] = units.get(sku, 0.0) + r / price(sku)
    scale = {sku: min(1.0, max(headroom(sku), 0.0) / u) if u > 0 else 1.0 for sku, u in units.items()}
    return {key: r * scale[key[0]] for key, r in revenue.items()}


def score(plan: Plan, market: Market) -> Score:
    """Measure ``plan`` on ``market``'s truth (see the module contract)."""
    t, f = market.truth, market.facts
    days = market.config.horizon_days
    sku_i = {s: i for i, s in enumerate(market.skus)}
    pl_i = {p: j for j, p in enumerate(market.placements)}
    uncapped: dict[tuple[str, str], float] = {}
    for (sku, placement), x in plan.spend.items():
        i, j = sku_i[sku], pl_i[placement]
        r = days * t.a[i, j] * (1 - np.exp(-x / (days * t.s[i, j]))) if x > 0 else 0.0
        uncapped[(sku, placement)] = float(r)
    true_rev = cap_at_stock(
        uncapped, lambda sku: f.price[sku_i[sku]], lambda sku: t.headroom_units[sku_i[sku]]
    )
    inc = sum(true_rev.values())
    spend = sum(plan.spend.values())
    profit = sum(f.margin[sku_i[k[0]]] * r for k, r in true_rev.items()) - spend
    covered = {k[0] for k, x in plan.spend.items() if x > 1.0}
    pred = sum(plan.predicted_revenue.get(k, 0.0) for k in true_rev)
    err = sum(abs(plan.predicted_revenue.get(k, 0.0) - r) for k, r in true_rev.items())
    oos = sum(x for k, x in plan.spend.items() if t.headroom_units[sku_i[k[0]]] <= 0)
    return Score(
        spend=round(spend, 2),
        incremental_revenue=round(inc, 2),
        iroas=round(inc / spend, 4) if spend > 0 else 0.0,
        profit=round(float(profit), 2),
        skus_covered=len(covered),
        forecast_wape=round(err / inc, 4) if inc > 0 else 0.0,
        forecast_bias=round((pred - inc) / inc, 4) if inc > 0 else 0.0,
        spend_out_of_stock=round(oos, 2),
    )
