"""Synthetic market, harmonisation, curve fits, the budget LP, scoring on ground truth, governance."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cleanroom import CleanRoomPolicy
from cleanroom.schema import EVENT_COLUMNS
from planning.compare import CompareRequest, plan_full
from planning.curves import Curve
from planning.harmonize import harmonize
from planning.market import RETAILER_FIELDS, MarketConfig, generate
from planning.planner import CellInput, PlanningError, PlanRequest, solve
from planning.scoring import score
from planning.workflow import ComparisonError, compare_local

SMALL = MarketConfig(seed=5, brands=["brewmax", "beanco"], skus_per_brand=8, days=28, shoppers=500)


def test_market_is_deterministic_by_seed_and_changes_with_it() -> None:
    a, b, c = generate(SMALL), generate(SMALL), generate(SMALL.model_copy(update={"seed": 6}))
    assert all(np.array_equal(a.events[k], b.events[k]) for k in a.events)
    assert np.array_equal(a.truth.a, b.truth.a) and not np.array_equal(a.truth.a, c.truth.a)
    assert len(a.events["sku"]) != len(c.events["sku"])
    brand = a.brand_data("brewmax")
    assert brand.spend.shape == (8, 3, 28) and not hasattr(brand, "truth")
    with pytest.raises(KeyError, match="unknown brand"):
        a.brand_data("nobody")


def test_harmonize_maps_the_retailers_names_and_reports_the_rest() -> None:
    h = harmonize(list(RETAILER_FIELDS), list(EVENT_COLUMNS))
    assert h.mapping == {k: v for k, v in RETAILER_FIELDS.items() if v} and h.unmapped == ["store_region"]
    fuzzy = harmonize(["Customer ID", "Txn-Date", "evnt", "Item", "brnd", "x"], list(EVENT_COLUMNS))
    assert fuzzy.mapping == {
        "Customer ID": "shopper_id",
        "Txn-Date": "event_date",
        "evnt": "event_type",
        "Item": "sku",
        "brnd": "brand",
    }
    assert fuzzy.unmapped == ["x"] and "placement" in fuzzy.missing
    dup = harmonize(["qty", "units"], list(EVENT_COLUMNS))  # two names for one column: the first wins
    assert dup.mapping == {"qty": "quantity"} and dup.unmapped == ["units"]


def _cells(n: int = 6, headroom: float | None = None) -> list[CellInput]:
    return [
        CellInput(
            Curve(f"S{i}", "p", a=40.0 + 10 * i, s=5.0 + i), value=0.3, price=5.0, headroom_units=headroom
        )
        for i in range(n)
    ]


def test_lp_solution_honours_every_constraint() -> None:
    req = PlanRequest(
        budget=1000, scenario="fixed_budget", roas_floor=1.5, exploration_share=0.3, max_cell_share=0.3
    )
    cells = _cells()
    cells[0] = CellInput(cells[0].curve, 0.3, 5.0, headroom_units=10.0)  # little stock on S0
    plan = solve(cells, req, days=14, objective="profit")
    spend = np.array(list(plan.spend.values()))
    assert spend.sum() == pytest.approx(1000)  # budget (fixed_budget spends it)
    assert (spend >= 0.3 * 1000 / 6 - 1e-6).all() and (spend <= 300 + 1e-6).all()  # exploration, cell cap
    assert plan.predicted_iroas >= 1.5 - 1e-9  # ROAS floor, in the planner's own model
    explore = 0.3 * 1000 / 6
    s0 = cells[0].curve
    optional_units = (plan.predicted_revenue[("S0", "p")] - s0.revenue(explore, 14)) / 5.0
    assert optional_units == pytest.approx(10.0)  # stock headroom binds beyond exploration
    assert plan.shadow_prices["stock_binding_skus"] >= 1 and plan.shadow_prices["budget"] > 0


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        (PlanRequest(budget=1000, scenario="fixed_budget", roas_floor=50), "roas_floor 50 is unreachable"),
        (
            PlanRequest(budget=1000, scenario="fixed_budget", exploration_share=1.0, max_cell_share=0.1),
            "above max_cell_share",
        ),
        (
            PlanRequest(budget=1000, scenario="fixed_budget", max_cell_share=0.1),
            "exceeds what 6 cells can take",
        ),
    ],
)
def test_infeasible_plans_say_why(req: PlanRequest, needle: str) -> None:
    with pytest.raises(PlanningError, match=needle):
        solve(_cells(), req, days=14, objective="profit")


@pytest.mark.parametrize(
    "fields",
    [
        {"budget": -1},
        {"budget": 0},
        {"budget": float("nan")},
        {"budget": 100, "exploration_share": 1.5},
        {"budget": 100, "roas_floor": -1},
        {"budget": 100, "roas_floor": float("inf")},
        {"budget": 100, "surprise": 1},
        {"budget": 100, "scenario": "target_roas"},  # a target scenario needs its target
        {"budget": 100, "scenario": "target_mroas", "target": 0},
        {"budget": 100, "scenario": "spend_it_all"},
        {"budget": 100, "must_spend": True},  # replaced by scenario fixed_budget
    ],
)
def test_malformed_requests_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        PlanRequest(**fields)


def test_planners_never_see_the_truth_and_the_evaluator_does() -> None:
    market = generate(SMALL)
    req = PlanRequest(budget=600)
    plan, _ = plan_full(market.brand_data("brewmax"), req)
    other = copy.deepcopy(market)
    other.truth.a *= 2.0  # a different truth behind the same observed data
    plan2, _ = plan_full(other.brand_data("brewmax"), req)
    assert plan.spend == plan2.spend  # the planner's input does not include the truth
    assert score(plan2, other).incremental_revenue > score(plan, market).incremental_revenue


def test_scoring_caps_sales_at_true_stock_and_counts_out_of_stock_spend() -> None:
    market = generate(SMALL)
    i = int(np.argmin(market.truth.headroom_units))
    market.truth.headroom_units[i] = 0.0
    sku, placement = market.skus[i], market.placements[0]
    from planning.planner import Plan

    plan = Plan("profit", {(sku, placement): 500.0}, {(sku, placement): 900.0}, 500.0, 1.8)
    s = score(plan, market)
    assert s.incremental_revenue == 0 and s.spend_out_of_stock == 500 and s.profit == -500
    assert s.forecast_bias == 0 and s.forecast_wape == 0  # no true revenue: errors undefined -> 0


def test_compare_local_measures_both_plans_and_every_number_moves_with_the_data(tmp_path: Path) -> None:
    policy = CleanRoomPolicy(retailer="acme", k=20, mode="exact", trusted_tenants=["brewmax"])
    req = CompareRequest(budget=800, manufacturer="brewmax", roas_floor=0.1)
    a = compare_local(SMALL, req, policy, tmp_path / "a")
    b = compare_local(SMALL, req.model_copy(update={"seed": 9}), policy, tmp_path / "b")
    assert set(a["cleanroom_view"]["blocked_fields"]) == {"margin", "promo_flag", "stock_level"}
    assert a["harmonization"]["unmapped"] == ["store_region"]
    for side in ("full", "cleanroom"):
        sa, sb = a[side]["score"], b[side]["score"]
        for metric in ("incremental_revenue", "iroas", "profit", "forecast_wape", "forecast_bias"):
            assert sa[metric] != sb[metric], (side, metric)
    profit_delta = a["full"]["score"]["profit"] - a["cleanroom"]["score"]["profit"]
    assert a["deltas"]["profit"] == pytest.approx(profit_delta, abs=0.02)
    assert a["timing"]["wall_s"] <= a["timing"]["sum_s"] + 0.05
    assert 1 <= len(a["top_skus"]) <= req.creatives and all(t["category"] for t in a["top_skus"])


def test_compare_sequential_is_the_same_comparison_one_side_after_the_other(tmp_path: Path) -> None:
    """``parallel: false`` (the fan-out benchmark's baseline): same plans and scores, the wall time is the
    sum of the two sides' times (they did not overlap)."""
    policy = CleanRoomPolicy(retailer="acme", k=20, mode="exact", trusted_tenants=["brewmax"])
    req = CompareRequest(budget=800, manufacturer="brewmax", roas_floor=0.1)
    par = compare_local(SMALL, req, policy, tmp_path / "par")
    seq = compare_local(SMALL, req.model_copy(update={"parallel": False}), policy, tmp_path / "seq")
    for side in ("full", "cleanroom"):
        assert seq[side]["score"] == par[side]["score"] and seq[side]["allocation"] == par[side]["allocation"]
    t = seq["timing"]
    assert t["wall_s"] >= t["full_s"] + t["cleanroom_s"] - 0.002  # rounding of the reported times
    assert seq["request"]["parallel"] is False


def test_a_comparison_over_several_markets_reports_the_mean_difference_its_interval_and_wins(
    tmp_path: Path,
) -> None:
    """``seeds: 4``: the result is the first market's (the same as a one-seed comparison), ``over_seeds`` adds
    each market's true profits — each equal to a one-seed comparison of that market — the mean difference with
    its 95 % t-interval and full data's wins, and the verdict says them."""
    policy = CleanRoomPolicy(retailer="acme", k=20, mode="exact", trusted_tenants=["brewmax"])
    req = CompareRequest(budget=800, manufacturer="brewmax", roas_floor=0.1, seed=5, seeds=4)
    many = compare_local(SMALL, req, policy, tmp_path / "many")
    one = compare_local(SMALL, req.model_copy(update={"seeds": 1}), policy, tmp_path / "one")
    assert many["full"]["score"] == one["full"]["score"] and "over_seeds" not in one
    rows = many["over_seeds"]["per_seed"]
    assert [r["seed"] for r in rows] == [5, 6, 7, 8]
    third = compare_local(SMALL, req.model_copy(update={"seed": 7, "seeds": 1}), policy, tmp_path / "third")
    assert rows[2] == {
        "seed": 7,
        "full": third["full"]["score"]["profit"],
        "cleanroom": third["cleanroom"]["score"]["profit"],
    }
    from scipy.stats import t as student

    diffs = np.array([r["full"] - r["cleanroom"] for r in rows])
    summary = many["over_seeds"]["full_minus_cleanroom"]
    half = student.ppf(0.975, 3) * diffs.std(ddof=1) / 2  # t(0.975, 3) = 3.182... x sd / sqrt(4)
    assert summary["mean"] == pytest.approx(diffs.mean(), abs=0.01)
    assert summary["low"] == pytest.approx(diffs.mean() - half, abs=0.02)
    assert summary["high"] == pytest.approx(diffs.mean() + half, abs=0.02)
    assert many["over_seeds"]["full_wins"] == int((diffs > 0).sum())
    assert many["verdict"].endswith(many["over_seeds"]["sentence"])
    assert f"over 4 markets (seeds 5-8) full data adds {diffs.mean():+,.2f}" in many["verdict"]
    with pytest.raises(ValidationError):
        CompareRequest(budget=800, manufacturer="brewmax", seeds=11)


def test_compare_local_under_dp_is_reproducible_by_seed(tmp_path: Path) -> None:
    """The market's clean room draws simulated noise from the market's seed: the same seed, the same plans."""
    policy = CleanRoomPolicy(
        retailer="acme", k=20, dp={"max_delta_per_query": 1e-3, "epsilon_per_query": 2.0}
    )
    req = CompareRequest(budget=800, manufacturer="brewmax", roas_floor=0.1)
    a = compare_local(SMALL, req, policy, tmp_path / "a")
    b = compare_local(SMALL, req, policy, tmp_path / "b")
    c = compare_local(SMALL, req.model_copy(update={"seed": 9}), policy, tmp_path / "c")
    assert a["cleanroom_view"]["noisy"] and a["cleanroom_view"]["cells_suppressed"] is None
    assert a["cleanroom"]["score"] == b["cleanroom"]["score"] and a["cleanroom_view"] == b["cleanroom_view"]
    assert a["cleanroom"]["score"] != c["cleanroom"]["score"]


def test_a_refused_shape_query_leaves_a_plan_made_without_it(tmp_path: Path) -> None:
    """Exact mode checks every release against all earlier ones, room-wide: on the demo market of seed 3,
    beanco's per-day query, asked after brewmax's releases, is refused as differencing. The per-day query only
    shapes the curves, so beanco's clean-room plan is made without it and says so; the totals query is
    still required (its refusal fails the side, as before)."""
    import asyncio

    from planning.workflow import LocalBackend, run_comparison

    brands = ["brewmax", "beanco"]
    policy = CleanRoomPolicy(retailer="acme", mode="exact", trusted_tenants=brands)
    backend = LocalBackend(policy, tmp_path)
    base = MarketConfig(seed=3)
    try:
        first, second = (
            asyncio.run(run_comparison(b, {"budget": 1000, "manufacturer": b}, base, backend)) for b in brands
        )
    finally:
        backend.close()
    assert "daily_refused" not in first["cleanroom_view"]
    assert "differencing" in second["cleanroom_view"]["daily_refused"]
    assert second["cleanroom_view"]["daily_cells_released"] == 0 and second["cleanroom"]["cells_planned"] > 0


def test_compare_local_refuses_bad_requests_with_a_status(tmp_path: Path) -> None:
    from serving.errors import status_of

    policy = CleanRoomPolicy(retailer="acme", k=20, mode="exact", trusted_tenants=["brewmax"])
    with pytest.raises(ComparisonError, match="unknown manufacturer") as e:
        compare_local(SMALL, CompareRequest(budget=800, manufacturer="nobody"), policy, tmp_path)
    assert status_of(e.value) == 400


def test_column_generation_reaches_the_full_lp_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    import planning.planner as planner

    rng = np.random.default_rng(3)
    cells = [
        CellInput(
            Curve(f"S{i}", f"p{j}", float(rng.uniform(5, 100)), float(rng.uniform(2, 40))), 0.3, 5.0, 40.0
        )
        for i in range(60)
        for j in range(4)
    ]
    req = PlanRequest(budget=2000, roas_floor=0.8, exploration_share=0.1, max_cell_share=0.05)
    fast = solve(cells, req, days=28, objective="profit")
    monkeypatch.setattr(planner, "_initial_columns", lambda optional, *args: optional.copy())
    full = solve(cells, req, days=28, objective="profit")
    assert fast.shadow_prices["lp_columns"] < full.shadow_prices["lp_columns"]
    assert sum(fast.predicted_revenue.values()) == pytest.approx(
        sum(full.predicted_revenue.values()), rel=1e-7
    )
    assert fast.shadow_prices["budget"] == pytest.approx(full.shadow_prices["budget"], rel=1e-6)


def test_market_corpora_carry_the_brands_private_facts_and_move_with_the_seed(tmp_path: Path) -> None:
    from planning.market_corpus import corpus
    from serving.cli import main

    market = generate(SMALL)
    brand = corpus(market, "manufacturer", "brewmax")
    i = market.skus.index("BRE-0000")
    assert f"{100 * market.facts.margin[i]:.0f}% margin" in brand[0][1]
    assert brand != corpus(generate(SMALL.model_copy(update={"seed": 6})), "manufacturer", "brewmax")
    assert corpus(market, "retailer") and corpus(market, "industry") and corpus(market, "task", "beanco")
    with pytest.raises(ValueError, match="unknown corpus kind"):
        corpus(market, "gossip")
    out = tmp_path / "brand.jsonl"
    assert main(["market", "corpus", "--kind", "manufacturer", "--owner", "brewmax", "--out", str(out)]) == 0
    assert out.read_text().count("\n") == 24  # 12 SKUs x 2 facts (the demo market)


def test_the_per_cell_cap_defaults_by_scenario_and_an_explicit_one_holds_in_every_scenario() -> None:
    """One cell far better than the rest: where the budget is only an upper bound (profit_optimal, the
    default) nothing caps it below the budget, so it takes what its curve says pays; a fixed budget spreads
    (at most 0.25 of it per cell); an explicit max_cell_share binds in both."""
    cells = [CellInput(Curve("S0", "p", a=400.0, s=20.0), value=0.5)] + [
        CellInput(Curve(f"S{i}", "p", a=5.0, s=5.0), value=0.5) for i in range(1, 5)
    ]
    budget = 2000.0
    free = solve(cells, PlanRequest(budget=budget), 28, "profit")
    assert free.spend[("S0", "p")] > 0.25 * budget  # the profitable spend of the best cell, not a quarter
    assert PlanRequest(budget=budget).cell_share == 1.0
    spread = solve(cells, PlanRequest(budget=budget, scenario="fixed_budget"), 28, "profit")
    assert PlanRequest(budget=budget, scenario="fixed_budget").cell_share == 0.25
    assert max(spread.spend.values()) <= 0.25 * budget + 1e-6
    for scenario in ("profit_optimal", "fixed_budget"):
        capped = solve(cells, PlanRequest(budget=budget, scenario=scenario, max_cell_share=0.2), 28, "profit")
        assert max(capped.spend.values()) <= 0.2 * budget + 1e-6, scenario
