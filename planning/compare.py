"""Full-data plan vs clean-room plan, scored on the same ground truth.

- :func:`plan_full`: the brand's own tables (:class:`BrandData`: spend, sell-out, margins, stock, promos) →
  SKU x placement curves → a profit-maximising LP with stock headroom.
- :func:`cleanroom_queries` + :func:`plan_from_cleanroom`: what the retailer's clean room releases
  (attributed revenue and spend of cells with >= k shoppers, noisy under DP) → coarser curves → the same LP,
  with the brand's own margins and stock (it holds them whichever way it reaches the retailer's data;
  ``cleanroom_margins: false`` plans from the clean room alone: revenue, no stock).
- :func:`build_result`: both plans scored by :func:`planning.scoring.score` on the market's truth, the
  deltas, and a verdict that says who won — the clean room too, when it does.
Pure Python: the Ray deployments and ``rmn compare`` call these.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from planning.curves import CARRYOVERS, Curve, fit_aggregates, fit_brand
from planning.harmonize import Harmonization, harmonize
from planning.market import BrandData, Market, MarketConfig
from planning.planner import CellInput, Plan, PlanRequest, solve
from planning.scoring import Score, score
from planning.spend import analyse
from planning.uncertainty import DRAWS, intervals


class CompareRequest(PlanRequest):
    """``POST /v1/plans/compare``: a budget question for one manufacturer at one retailer."""

    model_config = ConfigDict(extra="forbid")

    retailer: str = Field(default="acme", max_length=64, description="Retailer whose clean room is used.")
    manufacturer: str = Field(max_length=64, description="The brand planning (its private data).")
    seed: int | None = Field(default=None, ge=0, le=2**31, description="Market seed (default: config's).")
    creatives: int = Field(default=3, ge=0, le=10, description="Ad lines to write (top SKUs by spend).")
    write_text: bool = Field(
        default=True, description="Write the rationale and ad lines (false: numbers only)."
    )
    cleanroom_margins: bool = Field(
        default=True,
        description="The clean-room plan uses the brand's own margins and stock (it holds them); false: the "
        "clean room's answers alone (revenue objective, no stock), the third arm of the comparison.",
    )
    parallel: bool = Field(
        default=True,
        description="Plan both sides at once (false: one after the other, the baseline bench/planning.py "
        "measures the fan-out against).",
    )
    seeds: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Markets to compare on: consecutive seeds from `seed`. The result is the first market's; "
        "`over_seeds` adds each market's true profits, the mean difference with a 95 % interval and the win rate, "
        "and the verdict says them (each extra market runs both planners again, on its own clean room).",
    )


class PlanSide(BaseModel):
    """One plan: what its planner predicted and what the truth says."""

    objective: str
    scenario: str
    cells_planned: int
    predicted_iroas: float
    score: Score
    shadow_prices: dict[str, Any]
    spend_analysis: dict[str, Any] = Field(
        default_factory=dict,
        description="How much to spend on this planner's own curves: profit-vs-spend curve, profit-optimal and "
        "break-even spend, marginal ROAS, a warning first when the plan is expected to lose money, what the curves "
        "were fitted on and (full data) 80 % intervals on the plan's incremental revenue, profit and iROAS.",
    )
    allocation: list[dict[str, Any]]
    curves: list[dict[str, Any]] = Field(
        default_factory=list, description="The planner's response curves of its top cells: [spend, revenue]."
    )
    seconds: float


class ComparisonResult(BaseModel):
    """Documented in README "Planning and comparison"."""

    request: dict[str, Any]
    market: dict[str, Any]
    harmonization: dict[str, Any]
    full: PlanSide
    cleanroom: PlanSide
    cleanroom_view: dict[str, Any]
    deltas: dict[str, float]
    verdict: str
    timing: dict[str, float]
    rationale: dict[str, Any] | None = None
    creatives: list[dict[str, Any]] | None = None
    models: dict[str, str] = Field(default_factory=dict)


def plan_full(
    data: BrandData,
    req: PlanRequest,
    draws: int = DRAWS,
    carryovers: tuple[float, ...] = CARRYOVERS,
    weekly: bool = True,
) -> tuple[Plan, float]:
    """The full-data plan and its wall seconds (fit + LP + ``draws`` bootstrap refits for its intervals; 0: none).
    ``carryovers`` and ``weekly``: what the fit may find (:func:`planning.curves.fit_brand`; a study turns them off)."""
    started = time.perf_counter()
    fit = fit_brand(data, None, carryovers, weekly)
    curves, baseline_units = fit.curves, fit.baseline
    f = data.facts
    idx = {s: i for i, s in enumerate(f.sku)}
    cells = []
    for c in curves:
        i = idx[c.sku]
        expected_units = baseline_units[i] * data.horizon_days
        headroom = float(f.stock[i] - expected_units)
        if headroom <= 0:  # the brand knows this SKU will sell out anyway: no ad spend at all
            continue
        cells.append(CellInput(c, float(f.margin[i]), float(f.price[i]), headroom))
    plan = solve(cells, req, data.horizon_days, "profit")
    plan.analysis = analyse(cells, req, data.horizon_days, plan).as_dict()
    plan.analysis["fitted_on"] = fit.fitted_on(data)
    plan.analysis["fit"] = fit.describe()
    chosen = tuple(sorted(set(fit.carryover.values())))
    plan.analysis["intervals"] = (
        intervals(data, plan, draws, carryovers=chosen, weekly=weekly)
        if plan.total_spend > 0 and draws
        else None
    )
    return plan, time.perf_counter() - started


def cleanroom_queries(manufacturer: str) -> dict[str, dict[str, Any]]:
    """What the clean-room planner asks, in order: per SKU x placement totals (asking for margin, stock and
    promos too, which the policy blocks), then per placement x day totals for the curves' shape — skipped
    when the first answer is noisy (DP): daily cells are then mostly noise and would only spend epsilon."""
    brand = [{"column": "brand", "op": "eq", "value": manufacturer}]
    return {
        "cells": {
            "dimensions": ["sku", "placement", "margin", "stock_level", "promo_flag"],
            "metrics": ["spend", "revenue"],
            "filters": brand,
        },
        "daily": {
            "dimensions": ["placement", "event_date"],
            "metrics": ["spend", "revenue"],
            "filters": brand,
        },
    }


def wants(name: str, answers: dict[str, dict[str, Any]]) -> bool:
    """Whether the clean-room planner still asks query ``name`` given the answers so far."""
    return name != "daily" or not answers.get("cells", {}).get("noisy", False)


def own_cells(curves: list[Curve], own: BrandData) -> list[CellInput]:
    """Clean-room curves with the brand's own margins and stock headroom (stock minus its sell-out rate over
    the horizon; a SKU without headroom gets no cell)."""
    f = own.facts
    idx = {s: i for i, s in enumerate(f.sku)}
    cells = []
    for c in curves:
        i = idx.get(c.sku)
        if i is None:
            continue
        headroom = float(f.stock[i] - own.units[i].mean() * own.horizon_days)
        if headroom > 0:
            cells.append(CellInput(c, float(f.margin[i]), float(f.price[i]), headroom))
    return cells


def cleanroom_view(answers: dict[str, dict[str, Any]], own_data: bool) -> dict[str, Any]:
    """What the clean room showed a planner: cells released and suppressed, the fields it blocked, epsilon
    spent, k, whether the brand's own margins and stock were used, and why the per-day query was refused."""
    cells = answers["cells"]
    daily = answers.get("daily") or {"cells": [], "blocked_fields": [], "epsilon_spent": 0.0}
    view = {
        "cells_released": len(cells["cells"]),
        "cells_suppressed": cells["suppressed_cells"],
        "daily_cells_released": len(daily["cells"]),
        "blocked_fields": sorted(set(cells["blocked_fields"]) | set(daily["blocked_fields"])),
        "epsilon_spent": round(cells.get("epsilon_spent", 0.0) + daily.get("epsilon_spent", 0.0), 6),
        "noisy": bool(cells.get("noisy")),
        "k": cells.get("k"),
        "brand_margins_and_stock": own_data,
    }
    if "daily_refused" in answers:  # the shape query was refused by the policy: curves shaped without it
        view["daily_refused"] = answers["daily_refused"]["reason"]
    return view


def plan_from_cleanroom(
    answers: dict[str, dict[str, Any]],
    req: PlanRequest,
    history_days: int,
    horizon_days: int,
    own: BrandData | None = None,
) -> tuple[Plan, dict[str, Any], float]:
    """The clean-room plan from the answers to :func:`cleanroom_queries` (with ``own``: the brand's margins
    and stock too); returns (plan, what the clean room showed, wall seconds of fit + LP)."""
    started = time.perf_counter()
    view = cleanroom_view(answers, own is not None)
    daily = answers.get("daily") or {"cells": []}
    curves, carryover = fit_aggregates(answers["cells"]["cells"], daily["cells"], history_days)
    inputs = own_cells(curves, own) if own is not None else [CellInput(c) for c in curves]
    plan = solve(inputs, req, horizon_days, "profit" if own is not None else "revenue")
    plan.analysis = analyse(inputs, req, horizon_days, plan).as_dict()
    plan.analysis["fitted_on"] = (
        "attributed revenue in released aggregates (over-states the incremental response)"
    )
    plan.analysis["fit"] = {"carryover": carryover, "weekday_factors": None}
    plan.analysis["intervals"] = None  # totals per cell have no days to resample (docs/planning.md)
    return plan, view, time.perf_counter() - started


def allocation(plan: Plan, top: int = 25) -> list[dict[str, Any]]:
    """The plan's ``top`` cells by spend: SKU, placement, spend and predicted revenue (rounded to cents)."""
    rows = sorted(plan.spend.items(), key=lambda kv: -kv[1])[:top]
    return [
        {
            "sku": k[0],
            "placement": k[1],
            "spend": round(x, 2),
            "predicted_revenue": round(plan.predicted_revenue[k], 2),
        }
        for k, x in rows
    ]


def _side(plan: Plan, market: Market, seconds: float, top: int = 25) -> PlanSide:
    rows = allocation(plan, top)
    return PlanSide(
        objective=plan.objective,
        scenario=plan.scenario,
        cells_planned=len(plan.spend),
        predicted_iroas=round(plan.predicted_iroas, 4),
        score=score(plan, market),
        shadow_prices=plan.shadow_prices,
        spend_analysis=plan.analysis,
        allocation=rows,
        curves=_curve_points(
            plan, [(r["sku"], r["placement"]) for r in rows[:5]], market.config.horizon_days
        ),
        seconds=round(seconds, 4),
    )


def _curve_points(plan: Plan, keys: list[tuple[str, str]], days: int) -> list[dict[str, Any]]:
    """12 points of each cell's fitted period curve, up to twice the plan's spend on it."""
    out = []
    for k in keys:
        c = plan.curves.get(k)
        if c is None:
            continue
        top = max(2 * plan.spend[k], 1.0)
        xs = [top * i / 11 for i in range(12)]
        out.append(
            {
                "sku": k[0],
                "placement": k[1],
                "spend": round(plan.spend[k], 2),
                "points": [[round(x, 2), round(c.revenue(x, days), 2)] for x in xs],
            }
        )
    return out


METRICS = ("spend", "incremental_revenue", "iroas", "profit", "skus_covered", "forecast_wape",
           "forecast_bias", "spend_out_of_stock")  # fmt: skip


def build_result(
    req: CompareRequest,
    market: Market,
    full: tuple[Plan, float],
    cleanroom: tuple[Plan, dict[str, Any], float],
    harmonization: Harmonization,
    wall_s: float,
) -> ComparisonResult:
    """Score both plans on ``market``'s truth and compare (see the module contract)."""
    f_side = _side(full[0], market, full[1])
    c_side = _side(cleanroom[0], market, cleanroom[2])
    fs, cs = f_side.score.model_dump(), c_side.score.model_dump()
    deltas = {m: round(float(fs[m]) - float(cs[m]), 4) for m in METRICS}
    if cs["profit"] != 0:
        deltas["profit_pct"] = round(100 * (fs["profit"] - cs["profit"]) / abs(cs["profit"]), 2)
    if cs["iroas"] > 0:
        deltas["iroas_pct"] = round(100 * (fs["iroas"] - cs["iroas"]) / cs["iroas"], 2)
    verdict = _verdict(fs, cs)
    sum_s = full[1] + cleanroom[2]
    return ComparisonResult(
        request=req.model_dump(),
        market={
            "seed": market.config.seed,
            "retailer": market.config.retailer,
            "manufacturer": req.manufacturer,
            "skus": len(market.brand_index(req.manufacturer)),
            "placements": market.placements,
            "history_days": market.config.days,
            "horizon_days": market.config.horizon_days,
            "retailer_log_rows": len(next(iter(market.events.values()))),
        },
        harmonization={
            "mapping": harmonization.mapping,
            "unmapped": harmonization.unmapped,
            "missing": harmonization.missing,
        },
        full=f_side,
        cleanroom=c_side,
        cleanroom_view=cleanroom[1],
        deltas=deltas,
        verdict=verdict,
        timing={
            "full_s": round(full[1], 4),
            "cleanroom_s": round(cleanroom[2], 4),
            "sum_s": round(sum_s, 4),
            "wall_s": round(wall_s, 4),
            "wall_over_sum": round(wall_s / sum_s, 3) if sum_s > 0 else 0.0,
        },
    )


def _verdict(full: dict[str, Any], clean: dict[str, Any]) -> str:
    """Who won on true profit (saying so plainly when neither plan makes money), and every other headline
    metric the other side won."""
    if full["profit"] <= 0 and clean["profit"] <= 0:
        head = (
            f"no plan is profitable: full data {full['profit']:+,.2f}, the clean room {clean['profit']:+,.2f} "
            "(true profit); spending less is better"
            if min(full["profit"], clean["profit"]) < 0
            else "no plan spends: neither planner expects a dollar to return more than it costs"
        )
    elif full["profit"] == clean["profit"]:
        head = f"a tie on true profit ({full['profit']:,.2f})"
    else:
        winner, loser = (
            ("full data", "the clean room")
            if full["profit"] > clean["profit"]
            else ("the clean room", "full data")
        )
        head = f"{winner} wins on true profit by {abs(full['profit'] - clean['profit']):,.2f} over {loser}"
    others = []
    higher_better = {
        "incremental_revenue": "incremental revenue",
        "iroas": "iROAS",
        "skus_covered": "SKUs covered",
    }
    lower_better = {"forecast_wape": "forecast error", "spend_out_of_stock": "out-of-stock spend"}
    for key, name in higher_better.items():
        if clean[key] != full[key]:
            others.append(
                f"{'the clean room' if clean[key] > full[key] else 'full data'} has the higher {name} ({full[key]:g} full vs {clean[key]:g} clean room)"
            )
    for key, name in lower_better.items():
        if clean[key] != full[key]:
            others.append(
                f"{'the clean room' if clean[key] < full[key] else 'full data'} has the lower {name} ({full[key]:g} vs {clean[key]:g})"
            )
    return "; ".join([head, *others])


def over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary of per-market rows (``seed``, ``full``, ``cleanroom``: true profits): the paired differences' mean
    with a 95 % t-interval (none for one market), full data's wins and ties, and a sentence for the verdict."""
    from scipy.stats import t as student

    diffs = [r["full"] - r["cleanroom"] for r in rows]
    n = len(diffs)
    mean = float(np.mean(diffs))
    half = float(student.ppf(0.975, n - 1) * np.std(diffs, ddof=1) / np.sqrt(n)) if n > 1 else None
    wins, ties = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs)
    low, high = (None, None) if half is None else (round(mean - half, 2), round(mean + half, 2))
    seeds = f"seed {rows[0]['seed']}" if n == 1 else f"seeds {rows[0]['seed']}-{rows[-1]['seed']}"
    sentence = f"over {n} market{'s' * (n > 1)} ({seeds}) full data adds {mean:+,.2f} true profit per plan"
    if low is not None and high is not None:
        sentence += f" (95 % interval {low:+,.2f} to {high:+,.2f}{'; no clear difference' if low <= 0 <= high else ''})"
    sentence += f" and wins {wins}/{n}" + (f" ({ties} tied)" if ties else "")
    return {
        "per_seed": rows,
        "full_minus_cleanroom": {"mean": round(mean, 2), "low": low, "high": high},
        "full_wins": wins,
        "ties": ties,
        "markets": n,
        "sentence": sentence,
    }


def winner(result: dict[str, Any]) -> str | None:
    """The plan the numbers favour on true profit (``full_data_plan`` | ``cleanroom_plan``; None: a tie)."""
    f, c = result["full"]["score"]["profit"], result["cleanroom"]["score"]["profit"]
    return None if f == c else "full_data_plan" if f > c else "cleanroom_plan"


def load_retailer_log(room: Any, market: Market, work: Path) -> Harmonization:
    """Export ``market``'s retailer log (the retailer's own field names), harmonise its header onto the
    clean-room schema and load it into ``room`` (a :class:`cleanroom.CleanRoom`)."""
    from cleanroom.schema import EVENT_COLUMNS

    path = market.write_retailer_log(work / f"{market.config.retailer}-log.csv")
    with path.open() as f:
        header = f.readline().strip().split(",")
    h = harmonize(header, list(EVENT_COLUMNS))
    room.load(path, mapping=h.mapping)
    return h


def market_config(base: MarketConfig, req: CompareRequest) -> MarketConfig:
    """The market a request plans in: the configured one, with the request's seed and retailer."""
    if req.manufacturer not in base.brands:
        raise ValueError(f"unknown manufacturer {req.manufacturer!r} (brands in this market: {base.brands})")
    if req.retailer != base.retailer:
        raise ValueError(f"unknown retailer {req.retailer!r} (this market's retailer: {base.retailer})")
    return base.model_copy(update={"seed": base.seed if req.seed is None else req.seed})
