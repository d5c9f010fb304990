"""Clean-room benchmark: policy-checked query latency vs the same raw DuckDB GROUP BY.

Synthetic events (SQL-generated in DuckDB: 100k shoppers, 500 SKUs, 3 placements, 90 days) at 1M and 10M
rows; query = purchases and revenue by sku x placement. The policy-checked path adds the k-distinct-shopper
count per cell, the remainder and the shopper populations kept for difference checks. Each repetition
uses a new tenant (no stored answer, no history). Writes ``bench/results/cleanroom.json``.
Target (issue #5): ratio <= 1.5x. Usage: ``python -m bench.cleanroom [--rows 1000000 10000000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    from cleanroom import CleanRoom, CleanRoomPolicy, Query

    results: dict[str, Any] = {"query": "purchases, revenue BY sku, placement", "k": 100, "runs": []}
    for n in args.rows:
        work = Path(tempfile.mkdtemp(prefix="rmn-bench-cr-"))
        room = CleanRoom(work / "acme.duckdb", CleanRoomPolicy(retailer="acme", k=100, max_groups=5000))
        t = time.perf_counter()
        room._con.execute(  # synthetic data, generated inside DuckDB
            """INSERT INTO events SELECT 'S' || (hash(i) % 100000), DATE '2026-01-01' + (i % 90)::INT,
               CASE WHEN i % 10 = 0 THEN 'purchase' WHEN i % 10 < 3 THEN 'click' ELSE 'impression' END,
               'SKU' || (hash(i * 7) % 500), 'brand' || (i % 20), 'cat' || (i % 10),
               CASE i % 3 WHEN 0 THEN 'search' WHEN 1 THEN 'display' ELSE 'offsite' END,
               1, 10.0, 0.5, 3.0, 40, false FROM range(?) t(i)""",
            [n],
        )
        load_s = time.perf_counter() - t
        raw_sql = (
            "SELECT sku, placement, COUNT(*) FILTER (WHERE event_type = 'purchase') AS purchases, "
            "COALESCE(SUM(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS revenue "
            "FROM events GROUP BY sku, placement"
        )
        q = Query(dimensions=["sku", "placement"], metrics=["purchases", "revenue"])
        raw, checked = [], []
        room._con.execute(raw_sql).fetchall()  # warm-up
        for rep in range(args.reps):
            t = time.perf_counter()
            room._con.execute(raw_sql).fetchall()
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = room.query(f"tenant{rep}", q)
            checked.append(time.perf_counter() - t)
        run = {
            "rows": n,
            "load_s": round(load_s, 2),
            "cells_released": len(res.cells),
            "cells_suppressed": res.suppressed_cells,
            "raw_ms": round(statistics.median(raw) * 1000, 1),
            "policy_checked_ms": round(statistics.median(checked) * 1000, 1),
        }
        run["ratio"] = round(run["policy_checked_ms"] / run["raw_ms"], 2)
        results["runs"].append(run)
        print(run, flush=True)
        room.close()
    out = Path("bench/results/cleanroom.json")
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
