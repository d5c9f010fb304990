"""How the value of data access moves with the market's size, the clean room's epsilon and its k.

One factor at a time around the demo market and policy (3,000 shoppers; DP with epsilon 1 per query; k = 100):
shoppers 1,000 ... 30,000; epsilon per query 0.6 ... 4 and exact mode (no noise, trusted partners); k 60 ... 400.
Per setting, seeds 1..N x brewmax and beanco at a budget of 1,000, scenario ``profit_optimal``, in-process (no
Ray, no LLM): the full-data plan and the clean-room plan with the brand's own margins and stock (the fair arm),
both scored on the market's truth (a clean room that releases no cell leaves its planner nothing to spend on:
profit 0, counted as ``cleanroom_released_nothing``). Reported per setting: mean true profit of each arm, full minus clean room
(mean and 95 % interval over the paired cases), the full-data win rate, and the clean-room cells released.

Writes ``bench/results/planning-sweep.json``. Usage: ``python -m bench.planning_sweep [--seeds 1-10]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.planning_quality import BRANDS, interval, markets, seed_range
from bench.record import write_results

BUDGET = 1_000
SHOPPERS = [1_000, 3_000, 10_000, 30_000]
EPSILONS: list[float | None] = [0.6, 1.0, 4.0, None]  # None: exact mode (below ~0.56 k=100 cannot be decided)
KS = [60, 100, 200, 400]  # at epsilon 1 and delta 1e-6 the noisy threshold cannot decide cells below k ~ 56


def policy_for(base: Any, epsilon: float | None, k: int) -> Any:
    """The demo policy with ``k`` and ``epsilon`` per query (None: exact mode for the brands, trusted)."""
    if epsilon is None:
        return base.model_copy(update={"k": k, "mode": "exact", "trusted_tenants": BRANDS})
    dp = base.dp.model_copy(
        update={
            "epsilon_per_query": epsilon,
            "min_epsilon_per_query": min(base.dp.min_epsilon_per_query, epsilon),
            "max_epsilon_per_query": max(base.dp.max_epsilon_per_query, epsilon),
        }
    )
    return base.model_copy(update={"k": k, "mode": "dp", "dp": dp})


def measure(market_cfg: Any, policy: Any, seeds: list[int]) -> dict[str, Any]:
    """Full data vs the clean room (+ own margins and stock) over ``seeds`` x brands (module docstring)."""
    from planning.compare import plan_from_cleanroom, plan_full
    from planning.planner import PlanningError, PlanRequest
    from planning.scoring import score

    req = PlanRequest(budget=BUDGET)
    full, clean, released, no_plan = [], [], [], 0
    with tempfile.TemporaryDirectory() as work:
        for cfg, market, answers in markets(market_cfg, policy, seeds, Path(work)):
            for brand in BRANDS:
                data = market.brand_data(brand)
                f, _ = plan_full(data, req, draws=0)
                full.append(score(f, market).profit)
                try:
                    c, view, _ = plan_from_cleanroom(answers[brand], req, cfg.days, cfg.horizon_days, data)
                except PlanningError:  # nothing released to plan from: the clean-room planner spends nothing
                    clean.append(0.0)
                    released.append(0)
                    no_plan += 1
                    continue
                clean.append(score(c, market).profit)
                released.append(view["cells_released"])
    diffs = [a - b for a, b in zip(full, clean, strict=True)]
    return {
        "cases": len(diffs),
        "mean_true_profit": {
            "full": round(statistics.fmean(full), 2),
            "cleanroom_own": round(statistics.fmean(clean), 2),
        },
        "full_minus_cleanroom": interval(diffs),
        "full_wins": f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
        "cleanroom_cells_released_mean": round(statistics.fmean(released), 1),
        "cleanroom_released_nothing": no_plan,
    }


def run(seeds: list[int]) -> dict[str, Any]:
    from serving.demo.defaults import demo_config

    cfg = demo_config()
    assert cfg.comparison is not None
    market, policy = cfg.comparison.market, cfg.market_policy()
    out: dict[str, Any] = {"shoppers": {}, "epsilon_per_query": {}, "k": {}}
    for n in SHOPPERS:
        out["shoppers"][str(n)] = measure(market.model_copy(update={"shoppers": n}), policy, seeds)
        print("shoppers", n, out["shoppers"][str(n)]["full_minus_cleanroom"], flush=True)
    for eps in EPSILONS:
        key = "exact" if eps is None else str(eps)
        out["epsilon_per_query"][key] = measure(market, policy_for(policy, eps, policy.k), seeds)
        print("epsilon", key, out["epsilon_per_query"][key]["full_minus_cleanroom"], flush=True)
    for k in KS:
        out["k"][str(k)] = measure(market, policy_for(policy, policy.dp.epsilon_per_query, k), seeds)
        print("k", k, out["k"][str(k)]["full_minus_cleanroom"], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1-10", help="a range a-b of market seeds")
    args = ap.parse_args()
    seeds = seed_range(args.seeds)
    started = time.perf_counter()
    out: dict[str, Any] = {"sweep": run(seeds)}
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["setup"] = {
        "seeds": args.seeds,
        "brands": BRANDS,
        "budget": BUDGET,
        "scenario": "profit_optimal",
        "arms": "full first-party data vs the clean room + the brand's own margins and stock",
        "around": "demo market (3,000 shoppers, 56 days) and acme's policy (dp, epsilon 1 per query, k 100)",
    }
    path = write_results("bench/results/planning-sweep.json", out)
    print(path)


if __name__ == "__main__":
    main()
