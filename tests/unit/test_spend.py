"""Spend is a decision: the scenarios of the planner and the spend analysis a planner acts on."""

from __future__ import annotations

import numpy as np
import pytest

from planning.curves import Curve
from planning.planner import CellInput, PlanRequest, solve
from planning.spend import analyse, predicted_profit

DAYS = 14


def _cells() -> list[CellInput]:
    """Six cells whose first dollars return 1.2-3.6x in margin and whose later dollars lose."""
    return [
        CellInput(Curve(f"S{i}", "p", a=40.0 + 10 * i, s=5.0 + i), value=0.3, price=5.0) for i in range(6)
    ]


def _exact_profit(cells: list[CellInput], spend: dict[tuple[str, str], float]) -> float:
    return sum(c.value * c.curve.revenue(spend[(c.curve.sku, c.curve.placement)], DAYS) for c in cells) - sum(
        spend.values()
    )


def test_profit_optimal_spends_where_a_dollar_returns_more_than_itself_whatever_the_cap() -> None:
    cells = _cells()
    plans = [solve(cells, PlanRequest(budget=b), DAYS, "profit") for b in (5_000, 100_000, 10_000_000)]
    spends = [p.total_spend for p in plans]
    # the cap does not matter (up to the LP's piecewise-linear curves: breakpoints also follow the budget)
    assert spends[0] < 5_000 and max(spends) - min(spends) < 0.03 * spends[0]
    best = plans[1]
    for c in cells:  # at the optimum each cell's next dollar returns about a dollar of margin, no more
        x = best.spend[(c.curve.sku, "p")]
        marginal = c.value * c.curve.a / c.curve.s * np.exp(-x / (DAYS * c.curve.s))
        assert marginal == pytest.approx(1.0, abs=0.15)
    # and no other total does better on the same curves (exact profit, not the LP's linearisation)
    optimum = _exact_profit(cells, best.spend)
    fixed = PlanRequest(budget=1, scenario="fixed_budget", exploration_share=0.0, max_cell_share=1.0)
    for total in np.geomspace(50, 20_000, 12):
        other = solve(cells, fixed.model_copy(update={"budget": float(total)}), DAYS, "profit")
        assert _exact_profit(cells, other.spend) <= optimum + 0.01 * abs(optimum)


def test_a_small_cap_is_spent_in_full_and_a_fixed_budget_loses_what_it_must() -> None:
    cells = _cells()
    optimal = solve(cells, PlanRequest(budget=1e6), DAYS, "profit").total_spend
    capped = solve(cells, PlanRequest(budget=optimal / 4), DAYS, "profit")
    assert capped.total_spend == pytest.approx(optimal / 4, rel=1e-6)  # every dollar under the cap earns
    fixed = solve(cells, PlanRequest(budget=50 * optimal, scenario="fixed_budget"), DAYS, "profit")
    assert fixed.total_spend == pytest.approx(50 * optimal) and predicted_profit(fixed) < 0


def test_target_scenarios() -> None:
    cells = _cells()
    by_target = [
        solve(cells, PlanRequest(budget=1e6, scenario="target_mroas", target=t), DAYS, "profit")
        for t in (2, 4, 8)
    ]
    spends = [p.total_spend for p in by_target]
    assert spends[0] > spends[1] > spends[2] > 0  # a higher marginal target spends less
    for plan, target in zip(by_target, (2, 4, 8), strict=True):
        for (sku, placement), x in plan.spend.items():
            c = plan.curves[(sku, placement)]
            if x > 1:  # a funded cell's next dollar returns about the target in revenue
                assert c.a / c.s * np.exp(-x / (DAYS * c.s)) == pytest.approx(target, rel=0.2)
    by_roas = [
        solve(cells, PlanRequest(budget=1e6, scenario="target_roas", target=t), DAYS, "profit")
        for t in (4, 6)
    ]
    for plan, target in zip(by_roas, (4, 6), strict=True):  # spends until the plan's iROAS is the target
        assert plan.predicted_iroas == pytest.approx(target, rel=1e-3)
    assert by_roas[0].total_spend > by_roas[1].total_spend > 0


def test_the_analysis_marks_the_optimum_and_break_even_and_warns_first_when_the_plan_loses() -> None:
    cells = _cells()
    req = PlanRequest(budget=20_000, scenario="fixed_budget")
    plan = solve(cells, req, DAYS, "profit")
    a = analyse(cells, req, DAYS, plan)
    assert a.knows_margins and a.plan_profit is not None and a.plan_profit < 0
    assert a.optimal_spend is not None and a.optimal_profit is not None and a.break_even_spend is not None
    assert 0 < a.optimal_spend < a.break_even_spend < 20_000
    assert a.warning is not None and a.warning.startswith("expected to LOSE")
    assert f"{a.break_even_spend:,.2f}" in a.warning and f"{a.optimal_spend:,.2f}" in a.warning
    xs = [x for x, _ in a.curve]
    assert xs == sorted(xs) and xs[0] == 0 and a.optimal_spend in xs
    peak = max(a.curve, key=lambda p: p[1])
    assert peak[0] == pytest.approx(a.optimal_spend) and peak[1] == pytest.approx(a.optimal_profit, rel=0.01)
    assert a.marginal_profit_per_dollar is not None and a.marginal_profit_per_dollar < 0  # beyond the optimum
    at_be = solve(
        cells, req.model_copy(update={"budget": a.break_even_spend, "exploration_share": 0.0}), DAYS, "profit"
    )
    assert predicted_profit(at_be) == pytest.approx(0.0, abs=0.02 * a.optimal_profit)
    good = solve(cells, req.model_copy(update={"scenario": "profit_optimal"}), DAYS, "profit")
    b = analyse(cells, req.model_copy(update={"scenario": "profit_optimal"}), DAYS, good)
    assert b.warning is None and b.plan_profit == pytest.approx(a.optimal_profit)
    assert b.marginal_profit_per_dollar == pytest.approx(0.0, abs=0.15)


def test_without_margins_the_analysis_says_it_cannot_price_a_dollar() -> None:
    cells = [CellInput(c.curve) for c in _cells()]  # value 1: revenue only
    plan = solve(cells, PlanRequest(budget=5_000), DAYS, "revenue")
    a = analyse(cells, PlanRequest(budget=5_000), DAYS, plan)
    assert not a.knows_margins and a.plan_profit is None and a.optimal_spend is None
    assert a.warning is not None and "margins unknown" in a.warning
    assert a.marginal_roas == pytest.approx(1.0, abs=0.15)  # it stops where a dollar returns a dollar
