"""Planning quality on the market's ground truth: how much to spend, and the value of data access.

Over seeds x budgets x brands of the demo market (``--seeds 1-20``, budgets 500 ... 100,000, brewmax and
beanco), in-process (no Ray, no LLM):

1. **Spend decision**: the full-data planner's ``profit_optimal`` plan, scored on the truth, against the true
   optimum (the same LP on the TRUE curves, margins and stock headroom: what a planner who knew the market
   would spend). A case passes when the plan's true profit is >= 90 % of the optimum's (>= 0 when spending
   nothing is optimal). Also counted: plans whose OWN expected profit is negative, and how many of those
   carry the warning (all of them must).
2. **Three arms**, same objective (profit_optimal) and budgets: full first-party data; the clean room plus
   the brand's own margins and stock; the clean room alone (revenue objective, no stock). Mean true profit
   per arm, the mean of full minus each clean-room arm with a 95 % interval over the cases (normal
   approximation of the paired differences), and the win rates.

The clean room runs under the demo config's policy of the market's retailer (DP by default).

3. **The data's ceiling**: the same full-data planner when the brand's response data were better than any lift
   test — the true incremental revenue without noise, and with only the sales' own Poisson noise (no holdout
   noise) — to show how much of the gap to the target is the market's noise rather than the planner: how often
   it reaches 90 % of the optimum and its mean true profit.
4. **Interval coverage**: how often the full-data plan's 80 % interval (planning/uncertainty.py) holds the plan's
   TRUE profit and incremental revenue, profit-optimal and fixed-budget plans (the latter spend more, where the
   curves extrapolate), seeds 1-10 (where the widening was chosen) and 11-20 (held out) apart.
Writes ``bench/results/planning-quality.json``. Usage: ``python -m bench.planning_quality [--seeds 1-20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.record import write_results

BUDGETS = [500, 1_000, 5_000, 20_000, 100_000]
BRANDS = ["brewmax", "beanco"]


def true_optimum(market: Any, brand: str, budget: float) -> float:
    """True profit of the best plan on the market's truth (true curves, margins, stock), capped by budget."""
    from planning.curves import Curve
    from planning.planner import CellInput, PlanRequest, solve
    from planning.scoring import score

    t, f, days = market.truth, market.facts, market.config.horizon_days
    cells = [
        CellInput(Curve(market.skus[i], p, float(t.a[i, j]), float(t.s[i, j])), float(f.margin[i]), float(f.price[i]),
                  float(t.headroom_units[i]))
        for i in market.brand_index(brand)
        if t.headroom_units[i] > 0
        for j, p in enumerate(market.placements)
    ]  # fmt: skip
    if not cells:
        return 0.0
    plan = solve(cells, PlanRequest(budget=budget, max_cell_share=1.0), days, "profit")
    return score(plan, market).profit


async def answers_for(backend: Any, market_json: str, brand: str) -> dict[str, dict[str, Any]]:
    """The clean-room answers the clean-room planner gets for ``brand`` (asked once, reused per budget)."""
    from planning.workflow import cleanroom_answers

    room = await backend.prepare_room(market_json)
    return await cleanroom_answers(backend.asker(room.retailer, brand, brand), brand)


def ceiling(market: Any, brand: str, budget: float, rng: Any) -> dict[str, float]:
    """The profit-optimal plan's true profit with ideal response data (module item 3), per kind of data."""
    import numpy as np

    from planning.compare import plan_full
    from planning.planner import PlanRequest
    from planning.scoring import score

    f = market.facts
    unit_price = f.price[:, None] * np.where(f.promo, 1 - f.discount[:, None], 1.0)
    units = market.true_incremental_units()
    out = {}
    saved = market.lift, market.attributed
    try:
        for name, u in (("noise_free", units), ("poisson_only", rng.poisson(units))):
            # a perfect lift test: its holdout adds nothing (attributed = incremental)
            market.lift = market.attributed = u * unit_price[:, None, :]
            plan, _ = plan_full(market.brand_data(brand), PlanRequest(budget=budget), draws=0)
            out[name] = score(plan, market).profit
    finally:
        market.lift, market.attributed = saved
    return out


def markets(
    base: Any, policy: Any, seeds: list[int], work: Path
) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """Per seed: (market config, market, brand -> its clean-room answers under ``policy``), rooms under ``work``."""
    from planning.market import generate
    from planning.workflow import LocalBackend

    for seed in seeds:
        cfg = base.model_copy(update={"seed": seed})
        market = generate(cfg)
        backend = LocalBackend(policy, work / f"seed{seed}")
        try:
            answers = {b: asyncio.run(answers_for(backend, cfg.model_dump_json(), b)) for b in BRANDS}
        finally:
            backend.close()
        yield cfg, market, answers


def covered(plan: Any, truth: Any) -> list[dict[str, bool]]:
    """Whether the plan's 80 % intervals hold its true profit and incremental revenue ([] when it spends nothing)."""
    iv = plan.analysis["intervals"]
    if iv is None:
        return []
    return [{
        "profit": iv["profit"][0] <= truth.profit <= iv["profit"][1],
        "incremental_revenue": iv["incremental_revenue"][0] <= truth.incremental_revenue <= iv["incremental_revenue"][1],
    }]  # fmt: skip


def coverage(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of plans whose interval held the truth, per quantity."""
    hits = [h for c in cases for h in c["covered"]]
    return {
        "plans": len(hits),
        **{
            k: round(statistics.fmean(h[k] for h in hits), 3) if hits else None
            for k in ("profit", "incremental_revenue")
        },
    }


def interval(diffs: list[float]) -> dict[str, float]:
    """Mean and 95 % normal interval of paired differences."""
    mean = statistics.fmean(diffs)
    half = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return {"mean": round(mean, 2), "low": round(mean - half, 2), "high": round(mean + half, 2)}


def run(seeds: list[int], market: dict[str, float] | None = None) -> dict[str, Any]:
    import numpy as np

    from planning.compare import plan_from_cleanroom, plan_full
    from planning.planner import PlanRequest
    from planning.scoring import score
    from serving.demo.defaults import demo_config

    cfg = demo_config()
    assert cfg.comparison is not None
    base, policy = cfg.comparison.market.model_copy(update=market or {}), cfg.market_policy()
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        for mcfg, market, answers in markets(base, policy, seeds, Path(work)):
            seed = mcfg.seed
            for brand in BRANDS:
                data = market.brand_data(brand)
                for budget in BUDGETS:
                    req = PlanRequest(budget=budget)
                    full, _ = plan_full(data, req)
                    plain, _ = plan_full(data, req, draws=0, carryovers=(0.0,), weekly=False)
                    spent, _ = plan_full(data, req.model_copy(update={"scenario": "fixed_budget"}))
                    own, _, _ = plan_from_cleanroom(answers[brand], req, mcfg.days, mcfg.horizon_days, data)
                    alone, _, _ = plan_from_cleanroom(answers[brand], req, mcfg.days, mcfg.horizon_days)
                    truth_full, truth_spent = score(full, market), score(spent, market)
                    optimum = true_optimum(market, brand, budget)
                    cases.append({
                        "seed": seed, "brand": brand, "budget": budget,
                        "true_optimum": optimum,
                        "ceiling": ceiling(market, brand, budget, np.random.default_rng([seed, budget])),
                        "full": truth_full.profit, "full_spend": round(full.total_spend, 2),
                        "full_plain_fit": score(plain, market).profit, "fit": full.analysis["fit"],
                        "full_expected": round(full.analysis["plan_profit"], 2),
                        "full_warned": full.analysis["warning"] is not None,
                        "full_fixed_budget": truth_spent.profit,
                        "covered": covered(full, truth_full) + covered(spent, truth_spent),
                        "full_forecast_bias": truth_spent.forecast_bias,
                        "full_fixed_budget_warned": spent.analysis["warning"] is not None,
                        "full_fixed_budget_expected": round(spent.analysis["plan_profit"], 2),
                        "cleanroom_own": score(own, market).profit, "cleanroom_alone": score(alone, market).profit,
                    })  # fmt: skip
            print(f"seed {seed}: {len(cases)} cases", flush=True)
    return summarise(cases)


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    passed = [c["full"] >= 0.9 * c["true_optimum"] - 1e-6 for c in cases]
    negative = [c for c in cases if c["full_expected"] < 0]
    negative_fixed = [c for c in cases if c["full_fixed_budget_expected"] < 0]
    arms = ("full", "cleanroom_own", "cleanroom_alone")
    carry = [float(np.median(list(c["fit"]["carryover"].values()))) for c in cases]
    return {
        "cases": len(cases),
        "spend_decision": {
            "reaches_90pct_of_true_optimum": f"{sum(passed)}/{len(cases)}",
            "share": round(sum(passed) / len(cases), 3),
            "target_share": 0.9,
            "by_budget": {
                str(b): f"{sum(p for p, c in zip(passed, cases, strict=True) if c['budget'] == b)}/"
                f"{sum(c['budget'] == b for c in cases)}"
                for b in BUDGETS
            },
            "mean_true_profit": round(statistics.fmean(c["full"] for c in cases), 2),
            "mean_true_optimum": round(statistics.fmean(c["true_optimum"] for c in cases), 2),
            "expected_loss_plans": len(negative),
            "expected_loss_plans_warned": sum(c["full_warned"] for c in negative),
        },
        "fixed_budget_for_contrast": {  # what the planner did before spend was a decision: spend it all
            "mean_true_profit_by_budget": {
                str(b): round(statistics.fmean(c["full_fixed_budget"] for c in cases if c["budget"] == b), 2)
                for b in BUDGETS
            },
            "expected_loss_plans": len(negative_fixed),
            "expected_loss_plans_warned": sum(c["full_fixed_budget_warned"] for c in negative_fixed),
        },
        "three_arms": {
            "mean_true_profit": {a: round(statistics.fmean(c[a] for c in cases), 2) for a in arms},
            "full_minus_cleanroom_own": interval([c["full"] - c["cleanroom_own"] for c in cases]),
            "full_minus_cleanroom_alone": interval([c["full"] - c["cleanroom_alone"] for c in cases]),
            "full_wins_vs_cleanroom_own": f"{sum(c['full'] > c['cleanroom_own'] for c in cases)}/{len(cases)}",
            "full_wins_vs_cleanroom_alone": f"{sum(c['full'] > c['cleanroom_alone'] for c in cases)}/{len(cases)}",
        },
        "fit": {  # what the full-data fit found (median carry-over over placements; weekday factors kept)
            "carryover_median_by_case": {
                "mean": round(statistics.fmean(carry), 3),
                "min": min(carry),
                "max": max(carry),
            },
            "weekday_factors_kept": f"{sum(c['fit']['weekday_factors'] is not None for c in cases)}/{len(cases)}",
            "plain_fit_mean_true_profit": round(statistics.fmean(c["full_plain_fit"] for c in cases), 2),
            "plain_fit_reaches_90pct_of_true_optimum": (
                f"{sum(c['full_plain_fit'] >= 0.9 * c['true_optimum'] - 1e-6 for c in cases)}/{len(cases)}"
            ),
            "full_minus_plain_fit": interval([c["full"] - c["full_plain_fit"] for c in cases]),
        },
        "ceiling_reaches_90pct": {
            k: f"{sum(c['ceiling'][k] >= 0.9 * c['true_optimum'] - 1e-6 for c in cases)}/{len(cases)}"
            for k in ("noise_free", "poisson_only")
        },
        "ceiling_mean_true_profit": {
            k: round(statistics.fmean(c["ceiling"][k] for c in cases), 2)
            for k in ("noise_free", "poisson_only")
        },
        "interval_coverage_80pct": {
            "target": [0.7, 0.9],
            "all_seeds": coverage(cases),
            "seeds_1_10_calibration": coverage([c for c in cases if c["seed"] <= 10]),
            "seeds_11_20_held_out": coverage([c for c in cases if c["seed"] > 10]),
        },
        "full_forecast_bias_fixed_budget": round(statistics.fmean(c["full_forecast_bias"] for c in cases), 3),
        "per_case": cases,
    }


def seed_range(text: str) -> list[int]:
    """The seeds of ``--seeds a-b`` (or a single seed ``a``)."""
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1-20", help="a range a-b of market seeds")
    ap.add_argument("--carryover", type=float, default=0.0, help="the market's ad carry-over (0: none)")
    ap.add_argument("--weekly", type=float, default=0.0, help="the market's day-of-week amplitude (0: none)")
    ap.add_argument("--out", default="bench/results/planning-quality.json")
    args = ap.parse_args()
    seeds = seed_range(args.seeds)
    started = time.perf_counter()
    out = run(seeds, {"carryover": args.carryover, "weekly_amplitude": args.weekly})
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["setup"] = {"seeds": args.seeds, "budgets": BUDGETS, "brands": BRANDS, "scenario": "profit_optimal",
                    "market": "demo config's comparison market (3,000 shoppers, 56 days, 28-day horizon)",
                    "carryover": args.carryover, "weekly_amplitude": args.weekly}  # fmt: skip
    path = write_results(args.out, out)
    print({k: v for k, v in out.items() if k != "per_case"}, path)


if __name__ == "__main__":
    main()
