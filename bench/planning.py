"""Planning benchmark: LP solve time vs SKUs, and compare wall time vs the sum of the two plans.

1. LP: random concave curves for N SKUs x 5 placements (12 segments each; stock headroom on every SKU,
   a ROAS floor, exploration share), solved by HiGHS; N = 100 → 10,000. Target: <= 2 s at 10k SKUs.
2. Compare: ``compare_local`` on the default demo market (both plans in parallel threads, clean room in
   DuckDB): wall time vs full-data side + clean-room side. Target: <= 0.6x.
Writes ``bench/results/planning.json``. Usage: ``python -m bench.planning [--skus 100 1000 10000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def lp_run(n_skus: int, reps: int) -> dict[str, Any]:
    from federation.curves import Curve
    from federation.planner import CellInput, PlanRequest, solve

    rng = np.random.default_rng(n_skus)
    placements = 5
    cells = [
        CellInput(
            Curve(f"S{i}", f"p{j}", float(rng.uniform(5, 100)), float(rng.uniform(2, 40))),
            value=float(rng.uniform(0.1, 0.5)),
            price=float(rng.uniform(2, 20)),
            headroom_units=float(rng.uniform(10, 500)),
        )
        for i in range(n_skus)
        for j in range(placements)
    ]
    budget = 20.0 * n_skus
    req = PlanRequest(budget=budget, roas_floor=0.5, exploration_share=0.05, max_cell_share=0.05)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        plan = solve(cells, req, days=28, objective="profit")
        times.append(time.perf_counter() - t)
    return {
        "skus": n_skus,
        "cells": len(cells),
        "variables": len(cells) * 13,
        "solve_s_median": round(statistics.median(times), 3),
        "predicted_iroas": round(plan.predicted_iroas, 3),
        "stock_binding_skus": plan.shadow_prices["stock_binding_skus"],
    }


def compare_run(reps: int) -> dict[str, Any]:
    from federation.compare import CompareRequest, compare_local
    from serving.defaults import demo_config

    cfg = demo_config()
    assert cfg.comparison is not None
    ratios, walls, sums = [], [], []
    for rep in range(reps):
        req = CompareRequest(budget=1000, roas_floor=1.0, manufacturer="brewmax", seed=100 + rep)
        with tempfile.TemporaryDirectory() as work:
            r = compare_local(cfg.comparison.market, req, cfg.market_policy(), Path(work))
        walls.append(r.timing["wall_s"])
        sums.append(r.timing["sum_s"])
        ratios.append(r.timing["wall_over_sum"])
    return {
        "market": "demo (3 brands x 12 SKUs x 3 placements, 56 days), DP clean room, in-process threads",
        "reps": reps,
        "wall_s_median": round(statistics.median(walls), 3),
        "sum_s_median": round(statistics.median(sums), 3),
        "wall_over_sum_median": round(statistics.median(ratios), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skus", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    out: dict[str, Any] = {"lp": [], "compare": None}
    for n in args.skus:
        run = lp_run(n, args.reps)
        out["lp"].append(run)
        print(run, flush=True)
    out["compare"] = compare_run(5)
    print(out["compare"], flush=True)
    path = Path("bench/results/planning.json")
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
