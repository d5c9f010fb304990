"""Budget allocation: a linear program over piecewise-linear concave response curves (HiGHS via scipy).

Each cell (SKU x placement) gets segments of period spend ``[x_{j-1}, x_j]`` with slope = the curve's
average incremental revenue per $ on that segment (decreasing: the curve is concave). Variables: spend per
segment; ``value`` = margin where the planner knows it (1: revenue). The scenario says what is maximised and
whether the budget is spent or only a cap (Meridian's and Robyn's budget scenarios):

- ``fixed_budget``: ``sum value * slope * y`` with total spend = budget; each cell gets at least
  ``exploration_share * budget / cells``;
- ``profit_optimal`` (default): ``sum (value * slope - 1) * y``, the net profit: a dollar is spent only where
  it returns more than itself in margin, up to the budget;
- ``target_roas``: ``sum value * slope * y`` up to the budget while the plan's predicted iROAS stays >= target;
- ``target_mroas``: ``sum (slope - target) * y``: every dollar whose marginal iROAS is >= target, up to the budget.

In every scenario: predicted iROAS >= ``roas_floor``; each cell's spend <= ``max_cell_share * budget`` (unset: 0.25
in ``fixed_budget``, no cap in the others); where
stock is known, predicted incremental units of each SKU <= its stock headroom (SKUs with no headroom get no
spend beyond exploration: none at all). Duals give the shadow prices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from planning.curves import Curve

FIXED_BUDGET_CELL_SHARE = 0.25  # max_cell_share's default where the whole budget is spent

SEGMENTS = 12
Scenario = Literal["fixed_budget", "profit_optimal", "target_roas", "target_mroas"]


class PlanningError(ValueError):
    """The inputs admit no plan (the message says which constraint and by how much)."""


class PlanRequest(BaseModel):
    """A media-budget question."""

    model_config = ConfigDict(extra="forbid")

    budget: float = Field(
        gt=0,
        le=1e9,
        allow_inf_nan=False,
        description="Spend over the horizon ($): spent in full by scenario fixed_budget, the most to spend otherwise.",
    )
    scenario: Scenario = Field(
        default="profit_optimal",
        description="fixed_budget: spend the budget for the most margin; profit_optimal: spend (up to the budget) "
        "only what returns more than it costs; target_roas: the most revenue with the plan's iROAS >= target; "
        "target_mroas: every dollar whose marginal iROAS is >= target.",
    )
    target: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="The iROAS target of scenarios target_roas (the plan's) and target_mroas (each dollar's).",
    )
    roas_floor: float = Field(
        default=0.0, ge=0, le=100, allow_inf_nan=False, description="Minimum predicted iROAS of the plan."
    )
    exploration_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Budget share spread evenly over all cells (scenario fixed_budget only: elsewhere no dollar "
        "is spent that the curves say loses).",
    )
    max_cell_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Most of the budget one cell may take. Unset: 0.25 in scenario fixed_budget (a budget that "
        "must be spent is spread); no cap in the others, where the budget is only an upper bound and a cap "
        "relative to it would bind hardest on the smallest budgets.",
    )

    @model_validator(mode="after")
    def _target(self) -> PlanRequest:
        if self.scenario.startswith("target_") and self.target is None:
            raise ValueError(f"scenario {self.scenario} needs a target (an iROAS, e.g. 2.5)")
        return self

    @property
    def fixed(self) -> bool:
        """Whether the whole budget is spent."""
        return self.scenario == "fixed_budget"

    @property
    def cell_share(self) -> float:
        """The per-cell cap as a share of the budget: ``max_cell_share``, else its scenario's default."""
        if self.max_cell_share is not None:
            return self.max_cell_share
        return FIXED_BUDGET_CELL_SHARE if self.fixed else 1.0


@dataclass(frozen=True)
class CellInput:
    """One plannable cell: its curve, what a $ of its revenue is worth, and its SKU's stock headroom in
    units (None: unknown; shared by the SKU's cells)."""

    curve: Curve
    value: float = 1.0
    price: float = 1.0
    headroom_units: float | None = None


@dataclass
class Plan:
    """An allocation and what the planner's own model predicts for it."""

    objective: str  # profit (margins known) or revenue
    spend: dict[tuple[str, str], float]  # (sku, placement) -> period spend
    predicted_revenue: dict[tuple[str, str], float]
    total_spend: float
    predicted_iroas: float
    shadow_prices: dict[str, object] = field(default_factory=dict)
    solve_s: float = 0.0
    curves: dict[tuple[str, str], Curve] = field(default_factory=dict)  # the model the plan was made with
    values: dict[tuple[str, str], float] = field(default_factory=dict)  # margin per revenue $ (1: unknown)
    scenario: str = "fixed_budget"
    analysis: dict[str, Any] = field(default_factory=dict)  # planning.spend.SpendAnalysis.as_dict()

    @property
    def predicted_margin(self) -> float:
        """Predicted margin $ of the incremental revenue (revenue $ where margins are unknown)."""
        return sum(self.values.get(k, 1.0) * r for k, r in self.predicted_revenue.items())


def _segment_arrays(cells: list[CellInput], lo: float, hi: float, days: int) -> tuple[np.ndarray, np.ndarray]:
    """(width, slope) per cell x segment: segment 0 = the forced exploration spend [0, lo], then [lo, hi] cut
    at two grids merged: ``SEGMENTS`` budget-relative points (quadratic spacing) and ``SEGMENTS`` points on the
    curve.s own scale (``days * s`` times 1/64 .. 8, geometric), so the approximation is as fine where the
    curve bends whatever the budget (a profit-optimal spend far below a large cap is found, not averaged
    away). Shapes (cells, 3 * SEGMENTS + 1); segments past ``hi`` have width 0."""
    a = np.array([max(c.curve.a, 0.0) for c in cells])[:, None]
    sc = np.array([max(c.curve.s, 1e-9) for c in cells])[:, None]
    frac = (np.arange(1, SEGMENTS + 1) / SEGMENTS) ** 2
    budget_grid = np.tile(lo + (hi - lo) * frac, (len(cells), 1))
    curve_grid = days * sc * np.geomspace(1 / 64, 8, 2 * SEGMENTS)[None, :]
    inner = np.sort(np.concatenate([budget_grid, np.clip(curve_grid, lo, hi)], axis=1), axis=1)
    edges = np.concatenate([np.zeros((len(cells), 1)), np.full((len(cells), 1), lo), inner], axis=1)
    revenue = days * a * (1 - np.exp(-edges / (days * sc)))
    width = np.diff(edges, axis=1)
    slope = np.diff(revenue, axis=1) / np.where(width > 0, width, 1.0)
    return width, slope


def solve(cells: list[CellInput], req: PlanRequest, days: int, objective: str) -> Plan:
    """Allocate ``req.budget`` over ``cells`` (see the module contract); raises :class:`PlanningError`.

    Solved by column generation over the segments: an LP over the most valuable segments first, then any
    left-out segment with a profitable reduced cost (under the LP's duals) is added and the LP re-solved,
    until none is — the optimum of the full LP, at a fraction of its size."""
    import time

    if not cells:
        raise PlanningError("no cell to plan: nothing known about any SKU x placement")
    started = time.perf_counter()
    B = req.budget
    n = len(cells)
    lo, hi = _cell_bounds(req, n)
    width2, slope2 = _segment_arrays(cells, lo, hi, days)
    S1 = width2.shape[1]
    width, slope = width2.ravel(), slope2.ravel()
    cell_of = np.repeat(np.arange(n), S1)
    forced = np.tile(np.arange(S1) == 0, n)
    value = np.repeat(np.array([c.value for c in cells]), S1)
    price = np.repeat(np.array([max(c.price, 1e-9) for c in cells]), S1)
    skus = [c.curve.sku for c in cells]
    sku_names, sku_of_cell = np.unique(np.array(skus, dtype=object), return_inverse=True)
    headroom = _headroom(cells, sku_names, sku_of_cell)
    sku_of = np.repeat(sku_of_cell, S1)
    stocked = ~forced & ~np.isnan(headroom[sku_of])
    gain = _gain(req, value, slope)  # objective per $ (maximised)
    optional = ~forced & (width > 0)
    active = forced | _initial_columns(optional, gain, slope, width, 2.0 * B)
    floor = max(req.roas_floor, req.target or 0.0) if req.scenario == "target_roas" else req.roas_floor
    problem = _Problem(req, B, floor, width, slope, gain, forced, stocked, sku_of, price, headroom)
    res, cols, active = problem.optimise(
        active, optional, lambda: _why_infeasible(cells, req, days, objective)
    )
    y = np.zeros(len(width))
    y[cols] = res.x
    spend_c = np.bincount(cell_of, weights=y, minlength=n)
    rev_c = np.bincount(cell_of, weights=y * slope, minlength=n)
    total = float(spend_c.sum())
    key = [(c.curve.sku, c.curve.placement) for c in cells]
    shadow = _shadow_prices(problem.duals(res), sku_names, total)
    shadow.update(lp_columns=int(active.sum()), lp_columns_full=int((forced | optional).sum()))
    return Plan(
        objective,
        {k: float(x) for k, x in zip(key, spend_c, strict=True)},
        {k: float(r) for k, r in zip(key, rev_c, strict=True)},
        total,
        float(rev_c.sum() / total) if total > 0 else 0.0,
        shadow,
        time.perf_counter() - started,
        {(c.curve.sku, c.curve.placement): c.curve for c in cells},
        {(c.curve.sku, c.curve.placement): c.value for c in cells},
        req.scenario,
    )


def _cell_bounds(req: PlanRequest, n: int) -> tuple[float, float]:
    """Each cell's (forced exploration spend, most spend); PlanningError when they cannot hold together."""
    lo = req.exploration_share * req.budget / n if req.fixed else 0.0
    hi = req.cell_share * req.budget
    if lo > hi:
        raise PlanningError(
            f"exploration_share gives each of {n} cells {lo:.2f}, above max_cell_share's {hi:.2f}"
        )
    if req.fixed and hi * n < req.budget * (1 - 1e-9):
        raise PlanningError(
            f"budget {req.budget:g} exceeds what {n} cells can take at max_cell_share {req.cell_share:g}"
        )
    return lo, hi


def _shadow_prices(duals: dict[str, Any], sku_names: np.ndarray, total: float) -> dict[str, Any]:
    """The LP's duals as a planner reads them (objective per unit of each right-hand side)."""
    stock_values = sorted(
        ((str(sku_names[i]), float(v)) for i, v in enumerate(duals["stock"]) if v > 1e-9),
        key=lambda kv: -kv[1],
    )
    return {
        "budget": round(duals["budget"], 6),  # objective per extra $ of budget (margin $ or revenue $)
        "roas_floor": round(duals["floor"] * total, 6),  # objective lost per +1.0 of the floor
        "stock": [{"sku": s, "value_per_unit": round(v, 6)} for s, v in stock_values[:10]],
        "stock_binding_skus": len(stock_values),
    }


def _headroom(cells: list[CellInput], sku_names: np.ndarray, sku_of_cell: np.ndarray) -> np.ndarray:
    """Stock headroom per SKU (NaN: unknown); a SKU's stock is shared by its cells, the least when they
    disagree."""
    headroom = np.full(len(sku_names), np.nan)
    for ci, c in enumerate(cells):
        if c.headroom_units is not None:
            headroom[sku_of_cell[ci]] = np.fmin(headroom[sku_of_cell[ci]], max(c.headroom_units, 0.0))
    return headroom


def _gain(req: PlanRequest, value: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """What a $ of each segment adds to the scenario's objective (see the module contract)."""
    if req.scenario == "profit_optimal":
        out: np.ndarray = value * slope - 1.0
    elif req.scenario == "target_mroas":
        out = slope - float(req.target or 0.0)
    else:
        out = value * slope
    return out


def _initial_columns(
    optional: np.ndarray, gain: np.ndarray, slope: np.ndarray, width: np.ndarray, room: float
) -> np.ndarray:
    """Optional segments in the best-gain prefix and in the best-slope prefix (for the ROAS floor), each
    prefix holding ``room`` dollars of width. Concave curves make each a prefix of every cell's segments."""
    chosen = np.zeros(len(optional), dtype=bool)
    idx = np.flatnonzero(optional)
    for key in (gain, slope):
        order = idx[np.argsort(-key[idx], kind="stable")]
        upto = int(np.searchsorted(np.cumsum(width[order]), room)) + 1
        chosen[order[:upto]] = True
    return chosen


@dataclass
class _Problem:
    """The LP over a subset of columns: rows = [ROAS floor, stock per SKU] (+ budget as <= or ==)."""

    req: PlanRequest
    budget: float
    floor: float
    width: np.ndarray
    slope: np.ndarray
    gain: np.ndarray
    forced: np.ndarray
    stocked: np.ndarray
    sku_of: np.ndarray
    price: np.ndarray
    headroom: np.ndarray

    def solve(self, active: np.ndarray) -> tuple[Any, np.ndarray]:
        from scipy.optimize import linprog
        from scipy.sparse import coo_matrix

        cols = np.flatnonzero(active)
        m = len(cols)
        n_sku = len(self.headroom)
        st = np.flatnonzero(self.stocked[cols])
        rows = np.concatenate([np.zeros(m, dtype=int), 1 + self.sku_of[cols[st]]])
        colix = np.concatenate([np.arange(m), st])
        vals = np.concatenate([self.floor - self.slope[cols], self.slope[cols[st]] / self.price[cols[st]]])
        rhs = np.concatenate([[0.0], np.nan_to_num(self.headroom, nan=np.inf)])
        keep = np.isfinite(rhs)  # SKUs with unknown stock have no row
        A = coo_matrix((vals, (rows, colix)), shape=(1 + n_sku, m)).tocsr()[keep]
        b = rhs[keep]
        ones = np.ones((1, m))
        if self.req.fixed:
            extra = {"A_eq": ones, "b_eq": [self.budget]}
        else:
            from scipy.sparse import vstack

            A, b, extra = vstack([A, ones]).tocsr(), np.concatenate([b, [self.budget]]), {}
        w = self.width[cols]
        bounds = np.stack([np.where(self.forced[cols], w, 0.0), w], axis=1)
        res = linprog(-self.gain[cols], A_ub=A, b_ub=b, bounds=bounds, method="highs", **extra)
        self._keep = keep
        return res, cols

    def optimise(
        self, active: np.ndarray, optional: np.ndarray, why: Any
    ) -> tuple[Any, np.ndarray, np.ndarray]:
        """Column generation from ``active``: re-solve with every left-out segment of profitable reduced cost
        until there is none; widen the columns while infeasible, and only the full LP decides (PlanningError
        with ``why()``). Returns (result, its columns, the final active set)."""
        while True:
            res, cols = self.solve(active)
            if res.status == 2:
                if active[optional].all():
                    raise PlanningError(why())
                room = 4.0 * float(self.width[active].sum())
                active = self.forced | _initial_columns(optional, self.gain, self.slope, self.width, room)
                continue
            if res.status != 0:
                raise PlanningError(f"the solver stopped: {res.message}")
            reduced = self.reduced_costs(res, ~active & optional)
            entering = (~active & optional) & (reduced < -1e-9)
            if not entering.any():
                return res, cols, active
            active |= entering

    def _pi(self, res: Any) -> tuple[float, float, np.ndarray]:
        """Duals (scipy's sign, of the minimisation): budget, floor, stock per SKU (0 where no row)."""
        ub = np.asarray(res.ineqlin.marginals)
        stock = np.zeros(len(self.headroom))
        stock[self._keep[1:]] = ub[1 : 1 + int(self._keep[1:].sum())]
        budget = float(res.eqlin.marginals[0]) if self.req.fixed else float(ub[-1])
        return budget, float(ub[0]), stock

    def reduced_costs(self, res: Any, which: np.ndarray) -> np.ndarray:
        """Reduced costs (minimisation) of the columns in ``which``; elsewhere +inf."""
        pb, pf, ps = self._pi(res)
        out = np.full(len(self.width), np.inf)
        j = np.flatnonzero(which)
        stock_term = np.where(self.stocked[j], ps[self.sku_of[j]] * self.slope[j] / self.price[j], 0.0)
        out[j] = -self.gain[j] - (pb + pf * (self.floor - self.slope[j]) + stock_term)
        return out

    def duals(self, res: Any) -> dict[str, Any]:
        """Shadow prices for the maximisation: objective gained per unit of each right-hand side."""
        pb, pf, ps = self._pi(res)
        return {"budget": -pb, "floor": -pf, "stock": -ps}


def _why_infeasible(cells: list[CellInput], req: PlanRequest, days: int, objective: str) -> str:
    """Name the constraint that makes the plan impossible, with the best reachable value."""
    if req.roas_floor <= 0:  # the floor is not it (and re-solving without it would come back here)
        return "no allocation satisfies the budget, per-cell bounds and stock headroom together"
    try:
        best = solve(cells, req.model_copy(update={"roas_floor": 0.0}), days, objective)
    except PlanningError as e:
        return str(e)
    revenue_max = solve_max_revenue(cells, req, days)
    return (
        f"roas_floor {req.roas_floor:g} is unreachable: at budget {req.budget:g} the best predicted iROAS "
        f"is {revenue_max:.3f} (this plan without a floor: {best.predicted_iroas:.3f})"
    )


def solve_max_revenue(cells: list[CellInput], req: PlanRequest, days: int) -> float:
    """Best predicted iROAS reachable at ``req``'s budget and bounds, with no floor (revenue objective)."""
    revenue_cells = [CellInput(c.curve, 1.0, c.price, c.headroom_units) for c in cells]
    plan = solve(
        revenue_cells, req.model_copy(update={"roas_floor": 0.0, "scenario": "fixed_budget"}), days, "revenue"
    )
    return plan.predicted_iroas if math.isfinite(plan.predicted_iroas) else 0.0
