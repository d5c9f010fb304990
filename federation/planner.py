"""Budget allocation: a linear program over piecewise-linear concave response curves (HiGHS via scipy).

Each cell (SKU x placement) gets segments of period spend ``[x_{j-1}, x_j]`` with slope = the curve's
average incremental revenue per $ on that segment (decreasing: the curve is concave). Variables: spend per
segment. Maximise ``sum value_c * slope_j * y_j`` (value = margin for a profit objective, 1 for revenue)
subject to: total spend = budget (or <= with ``must_spend=False``); predicted iROAS >= ``roas_floor``;
each cell's spend in ``[exploration_share * budget / cells, max_cell_share * budget]``; where stock is
known, predicted incremental units of each SKU (beyond its exploration spend) <= its stock headroom (SKUs
with no headroom get no spend beyond exploration: none at all). Duals give the shadow prices.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from federation.curves import Curve

SEGMENTS = 12


class PlanningError(ValueError):
    """The inputs admit no plan (the message says which constraint and by how much)."""


class PlanRequest(BaseModel):
    """A media-budget question."""

    model_config = ConfigDict(extra="forbid")

    budget: float = Field(gt=0, le=1e9, allow_inf_nan=False, description="Total spend over the horizon ($).")
    roas_floor: float = Field(
        default=0.0, ge=0, le=100, allow_inf_nan=False, description="Minimum predicted iROAS of the plan."
    )
    exploration_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Budget share spread evenly over all cells.",
    )
    max_cell_share: float = Field(
        default=0.25, gt=0, le=1, allow_inf_nan=False, description="Most of the budget one cell may take."
    )
    must_spend: bool = Field(default=True, description="Spend the whole budget (else: up to it).")


@dataclass(frozen=True)
class CellInput:
    """One plannable cell: its curve, what a $ of its revenue is worth, and stock (None: unknown)."""

    curve: Curve
    value: float = 1.0
    price: float = 1.0
    headroom_units: float | None = None


@dataclass
class Plan:
    """An allocation and what the planner's own model predicts for it."""

    objective: str
    spend: dict[tuple[str, str], float]  # (sku, placement) -> period spend
    predicted_revenue: dict[tuple[str, str], float]
    total_spend: float
    predicted_iroas: float
    shadow_prices: dict[str, object] = field(default_factory=dict)
    solve_s: float = 0.0


def _segments(c: Curve, lo: float, hi: float, days: int) -> list[tuple[float, float]]:
    """(width, slope) of each segment: one forced exploration segment [0, lo], then [lo, hi] split so
    segments are finer where the curve bends."""
    edges = [lo] + [lo + (hi - lo) * (j / SEGMENTS) ** 2 for j in range(1, SEGMENTS + 1)]
    out = [(lo, c.revenue(lo, days) / lo if lo > 0 else 0.0)]
    for x0, x1 in itertools.pairwise(edges):
        if x1 > x0:
            out.append((x1 - x0, (c.revenue(x1, days) - c.revenue(x0, days)) / (x1 - x0)))
    return out


def solve(cells: list[CellInput], req: PlanRequest, days: int, objective: str) -> Plan:
    """Allocate ``req.budget`` over ``cells`` (see the module contract); raises :class:`PlanningError`."""
    import time

    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    if not cells:
        raise PlanningError("no cell to plan: nothing known about any SKU x placement")
    started = time.perf_counter()
    B = req.budget
    lo = req.exploration_share * B / len(cells)
    hi = req.max_cell_share * B
    if lo > hi:
        raise PlanningError(
            f"exploration_share gives each of {len(cells)} cells {lo:.2f}, above max_cell_share's {hi:.2f}"
        )
    if req.must_spend and hi * len(cells) < B * (1 - 1e-9):
        raise PlanningError(
            f"budget {B:g} exceeds what {len(cells)} cells can take at max_cell_share {req.max_cell_share:g}"
        )
    cols_cell, widths, slopes, forced = [], [], [], []
    for ci, c in enumerate(cells):
        for j, (w, sl) in enumerate(_segments(c.curve, lo, hi, days)):
            cols_cell.append(ci)
            widths.append(w)
            slopes.append(sl)
            forced.append(j == 0)
    nv = len(widths)
    cell_of = np.array(cols_cell)
    slope = np.array(slopes)
    value = np.array([cells[i].value for i in cols_cell])
    bounds = [(w, w) if f else (0.0, w) for w, f in zip(widths, forced, strict=True)]
    # rows: [ROAS floor] + [stock per SKU with known headroom]
    rows, cols, vals, rhs, names = [], [], [], [], []
    rows += [0] * nv
    cols += list(range(nv))
    vals += list(req.roas_floor - slope)
    rhs.append(0.0)
    names.append("roas_floor")
    stock_rows: dict[str, int] = {}
    for v in range(nv):
        c = cells[cols_cell[v]]
        if c.headroom_units is None or forced[v]:
            continue
        sku = c.curve.sku
        if sku not in stock_rows:
            stock_rows[sku] = len(rhs)
            rhs.append(max(c.headroom_units, 0.0))
            names.append(f"stock:{sku}")
        rows.append(stock_rows[sku])
        cols.append(v)
        vals.append(slope[v] / max(c.price, 1e-9))
    A_ub = coo_matrix((vals, (rows, cols)), shape=(len(rhs), nv)).tocsr()
    budget_row = coo_matrix((np.ones(nv), (np.zeros(nv), np.arange(nv))), shape=(1, nv)).tocsr()
    eq = {"A_eq": budget_row, "b_eq": [B]} if req.must_spend else {}
    if not req.must_spend:
        A_ub = _vstack(A_ub, budget_row)
        rhs.append(B)
        names.append("budget")
    res = linprog(-(value * slope), A_ub=A_ub, b_ub=rhs, bounds=bounds, method="highs", **eq)
    if res.status == 2:
        raise PlanningError(_why_infeasible(cells, req, days, objective))
    if res.status != 0:
        raise PlanningError(f"the solver stopped: {res.message}")
    y = res.x
    spend_c = np.bincount(cell_of, weights=y, minlength=len(cells))
    rev_c = np.bincount(cell_of, weights=y * slope, minlength=len(cells))
    total = float(spend_c.sum())
    key = [(c.curve.sku, c.curve.placement) for c in cells]
    duals_ub = -np.asarray(res.ineqlin.marginals)  # for the maximisation: objective gained per unit of rhs
    budget_dual = -float(res.eqlin.marginals[0]) if req.must_spend else float(duals_ub[-1])
    stock_values = sorted(
        ((names[r][6:], float(duals_ub[r])) for r in stock_rows.values() if duals_ub[r] > 1e-9),
        key=lambda kv: -kv[1],
    )
    shadow = {
        "budget": round(budget_dual, 6),  # objective per extra $ of budget (marginal profit or revenue)
        "roas_floor": round(float(duals_ub[0]) * total, 6),  # objective lost per +1.0 of the floor
        "stock": [{"sku": s, "value_per_unit": round(v, 6)} for s, v in stock_values[:10]],
        "stock_binding_skus": len(stock_values),
    }
    return Plan(
        objective,
        {k: float(s) for k, s in zip(key, spend_c, strict=True)},
        {k: float(r) for k, r in zip(key, rev_c, strict=True)},
        total,
        float(rev_c.sum() / total) if total > 0 else 0.0,
        shadow,
        time.perf_counter() - started,
    )


def _vstack(a: object, b: object) -> object:
    from scipy.sparse import vstack

    return vstack([a, b]).tocsr()


def _why_infeasible(cells: list[CellInput], req: PlanRequest, days: int, objective: str) -> str:
    """Name the constraint that makes the plan impossible, with the best reachable value."""
    try:
        best = solve(cells, req.model_copy(update={"roas_floor": 0.0}), days, objective)
    except PlanningError as e:
        return str(e)
    if req.roas_floor > 0:
        revenue_max = solve_max_revenue(cells, req, days)
        return (
            f"roas_floor {req.roas_floor:g} is unreachable: at budget {req.budget:g} the best predicted iROAS "
            f"is {revenue_max:.3f} (this plan without a floor: {best.predicted_iroas:.3f})"
        )
    return "no allocation satisfies the budget, per-cell bounds and stock headroom together"


def solve_max_revenue(cells: list[CellInput], req: PlanRequest, days: int) -> float:
    """Best predicted iROAS reachable at ``req``'s budget and bounds, with no floor (revenue objective)."""
    revenue_cells = [CellInput(c.curve, 1.0, c.price, c.headroom_units) for c in cells]
    plan = solve(revenue_cells, req.model_copy(update={"roas_floor": 0.0}), days, "revenue")
    return plan.predicted_iroas if math.isfinite(plan.predicted_iroas) else 0.0
