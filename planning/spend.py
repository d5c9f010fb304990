"""How much to spend: the profit-vs-total-spend curve of a planner's own model, with the points a planner acts on.

For the cells and constraints a plan was made with, :func:`analyse` solves the allocation at a ladder of total
spends (fixed budget, no exploration: the best use of each total) and reads off, from the planner's OWN curves:

- ``optimal_spend`` / ``optimal_profit``: the profit-optimal total (the LP of scenario ``profit_optimal``,
  capped by the budget) and its predicted net profit (margin x incremental revenue - spend);
- ``break_even_spend``: the most that can be spent without an expected loss (where the curve crosses zero
  beyond the optimum; the budget when it never does);
- ``marginal_roas`` and ``marginal_profit_per_dollar`` of the chosen plan: what the next 1 % of its spend is
  predicted to return (incremental revenue, and margin minus the dollar), as Meridian's mROAS;
- ``warning``: first thing a planner reads when the chosen plan is expected to lose money.

Without margins (a planner that knows only revenue) profits are not predicted: the analysis says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from planning.planner import CellInput, Plan, PlanningError, PlanRequest, solve

LADDER = 14  # totals on the curve (geometric up to the budget), plus 0 and the optimum


@dataclass
class SpendAnalysis:
    """What the planner's model says about how much to spend (see the module contract)."""

    knows_margins: bool
    curve: list[tuple[float, float]] = field(default_factory=list)  # (total spend, predicted net profit)
    optimal_spend: float | None = None
    optimal_profit: float | None = None
    break_even_spend: float | None = None
    plan_spend: float = 0.0
    plan_profit: float | None = None
    marginal_roas: float = 0.0
    marginal_profit_per_dollar: float | None = None
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["curve"] = [[round(x, 2), round(y, 2)] for x, y in self.curve]
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def predicted_profit(plan: Plan) -> float:
    """The plan's predicted net profit on its own curves: margin x incremental revenue - spend."""
    return plan.predicted_margin - plan.total_spend


def marginal(plan: Plan, days: int, step: float = 0.01) -> tuple[float, float]:
    """(incremental revenue, margin) per extra $ when every cell's spend grows by ``step`` (1 %)."""
    if plan.total_spend <= 0:
        rev = margin = 0.0
        for k, c in plan.curves.items():  # the first dollar: the best cell's slope at zero
            slope0 = c.a / c.s if c.a > 0 and c.s > 0 else 0.0
            if slope0 > rev:
                rev, margin = slope0, plan.values.get(k, 1.0) * slope0
        return rev, margin
    d_rev = d_margin = 0.0
    for k, x in plan.spend.items():
        c = plan.curves[k]
        gain = c.revenue(x * (1 + step), days) - c.revenue(x, days)
        d_rev += gain
        d_margin += plan.values.get(k, 1.0) * gain
    extra = step * plan.total_spend
    return d_rev / extra, d_margin / extra


def analyse(cells: list[CellInput], req: PlanRequest, days: int, plan: Plan) -> SpendAnalysis:
    """The spend analysis of ``plan``, made from ``cells`` under ``req`` (see the module contract)."""
    knows = plan.objective == "profit"
    m_rev, m_margin = marginal(plan, days)
    out = SpendAnalysis(knows_margins=knows, plan_spend=plan.total_spend, marginal_roas=m_rev)
    if not knows:
        out.warning = (
            "margins unknown to this planner: it cannot tell a profitable dollar from a losing one (with "
            "profit_optimal its spend stops where a dollar returns a dollar of revenue)"
        )
        return out
    out.marginal_profit_per_dollar = m_margin - 1.0
    out.plan_profit = predicted_profit(plan)
    best = plan  # the profit-optimal plan of these cells: this one, unless another scenario made it
    if req.scenario != "profit_optimal":
        best = solve(
            cells,
            req.model_copy(update={"scenario": "profit_optimal", "max_cell_share": req.cell_share}),
            days,
            plan.objective,
        )
    out.optimal_spend, out.optimal_profit = best.total_spend, predicted_profit(best)
    fixed = req.model_copy(update={"scenario": "fixed_budget", "exploration_share": 0.0})

    def profit_at(total: float) -> float | None:
        """Predicted profit of the best plan spending ``total`` (None: the constraints cannot take it)."""
        share = min(1.0, req.cell_share * req.budget / total)  # the plan's own per-cell cap
        try:
            at = solve(
                cells,
                fixed.model_copy(update={"budget": total, "max_cell_share": share}),
                days,
                plan.objective,
            )
        except PlanningError:
            return None
        return predicted_profit(at)

    totals = sorted({best.total_spend, *np.geomspace(req.budget / 1000, req.budget, LADDER).tolist()})
    out.curve.append((0.0, 0.0))
    for total in totals:
        y = profit_at(total) if total > 0 else 0.0
        if y is None:  # stock or per-cell bounds cannot take this much: the curve ends here
            break
        out.curve.append((total, y))
    out.break_even_spend = _break_even(out.curve, best.total_spend, req.budget, profit_at)
    if out.plan_profit < 0:
        out.warning = (
            f"expected to LOSE {-out.plan_profit:,.2f} at a spend of {plan.total_spend:,.2f}: spending at most "
            f"{out.break_even_spend:,.2f} is not expected to lose money, and {out.optimal_spend:,.2f} is "
            f"expected to earn the most ({out.optimal_profit:+,.2f})"
        )
    return out


def _break_even(
    curve: list[tuple[float, float]], optimum: float, budget: float, profit_at: Any, steps: int = 8
) -> float:
    """The largest spend beyond the optimum whose predicted profit is still >= 0: the bracketing ladder points,
    then bisection on the LP itself; the curve's last point (or the budget) when it never turns negative."""
    points = [(x, y) for x, y in curve if x >= optimum]
    for (x0, y0), (x1, y1) in pairwise(points):
        if y1 < 0 <= y0:
            for _ in range(steps):
                mid = (x0 + x1) / 2
                y = profit_at(mid)
                x0, x1 = (mid, x1) if y is not None and y >= 0 else (x0, mid)
            return x0
    return min(points[-1][0] if points else optimum, budget)
