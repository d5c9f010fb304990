"""Planning benchmark: LP solve time vs SKUs, and compare wall time vs the sum of the two plans.

1. LP: random concave curves for N SKUs x 5 placements (12 segments + 1 exploration segment each; stock
   headroom on every SKU, a ROAS floor, exploration share), solved by HiGHS with column generation;
   N = 100 → 10,000. Target: <= 2 s at 10k SKUs. At 1,000 SKUs the full LP is solved too, and the two
   optima must agree (``full_lp_agrees``).
2. Compare: wall time of both plans planned at once vs the same two plans planned one after the other
   (``parallel: false``), alternated in one run, same market and seed. (a) ``compare_local`` on the demo
   market (two threads in one process); (b) ``POST /v1/plans/compare`` on a local Ray Serve app (two planner
   replicas; the clean-room side through the clean-room deployment). Target: <= 0.6x. (``wall_over_sum``,
   the wall time over the sum of each side's time measured while both run at once, is kept for reference: it
   scores 0.5-0.67 even with no speed-up, since each side slows the other down.)
Writes ``bench/results/planning.json``. Usage: ``python -m bench.planning [--skus 100 1000 10000]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.record import write_results


def lp_run(n_skus: int, reps: int) -> dict[str, Any]:
    from planning.curves import Curve
    from planning.planner import CellInput, PlanRequest, solve

    rng = np.random.default_rng(n_skus)
    placements = 5
    margin, price, headroom = (rng.uniform(lo, hi, n_skus) for lo, hi in ((0.1, 0.5), (2, 20), (10, 500)))
    cells = [
        CellInput(
            Curve(f"S{i}", f"p{j}", float(rng.uniform(5, 100)), float(rng.uniform(2, 40))),
            value=float(margin[i]),
            price=float(price[i]),
            headroom_units=float(headroom[i]),
        )
        for i in range(n_skus)
        for j in range(placements)
    ]
    budget = 20.0 * n_skus
    req = PlanRequest(
        budget=budget, scenario="fixed_budget", roas_floor=0.5, exploration_share=0.05, max_cell_share=0.05
    )
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        plan = solve(cells, req, days=28, objective="profit")
        times.append(time.perf_counter() - t)
    agrees = None
    if n_skus == 1000:  # the full LP (every column from the start) must reach the same optimum
        import planning.planner as planner

        initial = planner._initial_columns
        planner._initial_columns = lambda optional, *args: optional.copy()  # type: ignore[assignment]
        try:
            t = time.perf_counter()
            full = solve(cells, req, days=28, objective="profit")
            full_s = time.perf_counter() - t
        finally:
            planner._initial_columns = initial  # type: ignore[assignment]
        agrees = bool(np.isclose(_objective(full, cells), _objective(plan, cells), rtol=1e-7))
    return {
        "full_lp_agrees": agrees,
        "full_lp_solve_s": round(full_s, 3) if agrees is not None else None,
        "skus": n_skus,
        "cells": len(cells),
        "variables": len(cells) * 13,
        "solve_s_median": round(statistics.median(times), 3),
        "predicted_iroas": round(plan.predicted_iroas, 3),
        "stock_binding_skus": plan.shadow_prices["stock_binding_skus"],
        "lp_columns": plan.shadow_prices["lp_columns"],
        "full_lp_columns": plan.shadow_prices["lp_columns_full"],
    }


def _objective(plan: Any, cells: list[Any]) -> float:
    value = {(c.curve.sku, c.curve.placement): c.value for c in cells}
    return sum(value[k] * r for k, r in plan.predicted_revenue.items())


def compare_run(reps: int) -> dict[str, Any]:
    from planning.compare import CompareRequest
    from planning.workflow import compare_local
    from serving.demo.defaults import demo_config

    cfg = demo_config()
    assert cfg.comparison is not None
    walls: dict[bool, list[float]] = {True: [], False: []}
    ratios, over_sum = [], []
    for rep in range(reps):
        for parallel in (True, False) if rep % 2 == 0 else (False, True):  # order alternated
            req = CompareRequest(
                budget=1000, roas_floor=1.0, manufacturer="brewmax", seed=100 + rep, parallel=parallel
            )
            with tempfile.TemporaryDirectory() as work:
                r = compare_local(cfg.comparison.market, req, cfg.market_policy(), Path(work))
            walls[parallel].append(r["timing"]["wall_s"])
            if parallel:
                over_sum.append(r["timing"]["wall_over_sum"])
        ratios.append(walls[True][-1] / walls[False][-1])
    return {
        "market": "demo (3 brands x 12 SKUs x 3 placements, 56 days), DP clean room, in-process threads",
        "reps": reps,
        "parallel_wall_s_median": round(statistics.median(walls[True]), 3),
        "sequential_wall_s_median": round(statistics.median(walls[False]), 3),
        "parallel_over_sequential_median": round(statistics.median(ratios), 3),
        "wall_over_sum_median": round(statistics.median(over_sum), 3),
    }


def serve_run(reps: int, skus_per_brand: int) -> dict[str, Any]:
    """``POST /v1/plans/compare`` on a local Ray Serve app (tiny model, 1 engine replica, 2 planner
    replicas): the comparison deployment's wall time for both plans vs the sum of each side's time."""
    import httpx

    from serving.config import AppConfig
    from serving.demo.defaults import ACME_POLICY, DEMO_KEYS, demo_config
    from serving.local import local_app
    from serving.modelprep.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="rmn-bench-plan-"))
    base = demo_config().model_dump(mode="json")
    base.update(
        model={"path": str(build_tiny_model(work / "tiny")), "served_name": "base"},
        adapters={"root": str(work / "adapters"), "cache_root": str(work / "composites")},
        engine={"max_model_len": 512, "max_loras": 2, "max_cpu_loras": 2, "max_lora_rank": 16},
        engine_deployment={"num_cpus": 0.5, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        cleanroom={"retailers": [{"db_path": str(work / "acme.duckdb"), "policy": ACME_POLICY}]},
        comparison={
            "market": {"skus_per_brand": skus_per_brand, "shoppers": 500 * skus_per_brand},
            "planner_deployment": {"num_replicas": 2},
        },
    )
    base["federation"]["audit_log"] = None
    cfg = AppConfig.model_validate(base)
    headers = {"authorization": f"Bearer {DEMO_KEYS['brewmax']}"}
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    ratios = []

    def compare(url: str, parallel: bool) -> dict[str, Any]:
        body = {
            "budget": 5000,
            "manufacturer": "brewmax",
            "creatives": 0,
            "seed": 7,
            "roas_floor": 0.5,
            "parallel": parallel,
        }
        r = httpx.post(f"{url}/v1/plans/compare", json=body, headers=headers, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"compare failed: {r.status_code} {r.text}")
        return dict(r.json()["timing"])

    with local_app(cfg) as url:
        compare(url, True)  # builds the market and its clean room: not counted
        for rep in range(reps):
            for parallel in (True, False) if rep % 2 == 0 else (False, True):  # order alternated
                runs[parallel].append(compare(url, parallel))
            ratios.append(runs[True][-1]["wall_s"] / runs[False][-1]["wall_s"])
    par = runs[True]
    return {
        "market": f"3 brands x {skus_per_brand} SKUs x 3 placements, 56 days, DP clean room",
        "reps": reps,
        "full_s_median": statistics.median(t["full_s"] for t in par),
        "cleanroom_s_median": statistics.median(t["cleanroom_s"] for t in par),
        "parallel_wall_s_median": statistics.median(t["wall_s"] for t in par),
        "sequential_wall_s_median": statistics.median(t["wall_s"] for t in runs[False]),
        "parallel_over_sequential_median": round(statistics.median(ratios), 3),
        "wall_over_sum_median": round(statistics.median(t["wall_over_sum"] for t in par), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skus", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--serve-skus", type=int, default=60, help="SKUs per brand in the served market")
    ap.add_argument("--compare-reps", type=int, default=6, help="parallel/sequential pairs per compare run")
    args = ap.parse_args()
    out: dict[str, Any] = {"lp": [], "compare_in_process": None, "compare_serve": None}
    for n in args.skus:
        run = lp_run(n, args.reps)
        out["lp"].append(run)
        print(run, flush=True)
    out["compare_in_process"] = compare_run(args.compare_reps)
    print(out["compare_in_process"], flush=True)
    out["compare_serve"] = serve_run(args.compare_reps, args.serve_skus)
    print(out["compare_serve"], flush=True)
    path = Path("bench/results/planning.json")
    write_results(path, out)


if __name__ == "__main__":
    main()
