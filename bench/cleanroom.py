"""Clean-room benchmark: policy-checked and DP query latency vs a raw DuckDB query computing the SAME
aggregates, the distinct-shopper count included (what k needs).

Synthetic events (SQL-generated in DuckDB: 100k shoppers, 500 SKUs, 3 placements, 90 days) at 1M and 10M
rows; query = purchases and revenue by sku x placement. Measured, each repetition with a new tenant:
``checked`` = mode exact (trusted tenant): k distinct shoppers per cell, room-wide difference checks,
audit and release bookkeeping (fsync'ed); ``with_history`` = the next query (revenue by sku x placement
for the first 60 days), whose cells are compared with every earlier release of the room; ``dp`` = the
same query in mode dp (contribution bounding, ledger charge, OpenDP noise on 1500 cells x 3 values).
``raw`` = ``SELECT sku, placement, <metrics>, COUNT(DISTINCT shopper_id) ... GROUP BY sku, placement``.
Targets (issue #12): checked/raw <= 2, dp/raw <= 3 at 10M rows. Writes ``bench/results/cleanroom.json``.
Usage: ``python -m bench.cleanroom [--rows 1000000 10000000] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_results

RAW_SQL = (
    "SELECT sku, placement, COUNT(*) FILTER (WHERE event_type = 'purchase') AS purchases, "
    "COALESCE(SUM(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS revenue, "
    "COUNT(DISTINCT shopper_id) AS shoppers FROM events GROUP BY sku, placement"
)


def _generate(room: Any, n: int) -> None:
    """``n`` synthetic events inserted inside DuckDB (batch 1, rows numbered 1..n)."""
    room._con.execute(
        """INSERT INTO events SELECT 'S' || (hash(i) % 100000), DATE '2026-01-01' + (i % 90)::INT,
           CASE WHEN i % 10 = 0 THEN 'purchase' WHEN i % 10 < 3 THEN 'click' ELSE 'impression' END,
           'SKU' || (hash(i * 7) % 500), 'brand' || (i % 20), 'cat' || (i % 10),
           CASE i % 3 WHEN 0 THEN 'search' WHEN 1 THEN 'display' ELSE 'offsite' END,
           1, 10.0, 0.5, 3.0, 40, false, 1, i + 1, NULL FROM range(?) t(i)""",
        [n],
    )
    room.version = 1
    room.data_id = room._compute_data_id()  # rows inserted behind the loader's back


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import datetime as dt

    from cleanroom import CleanRoom, CleanRoomPolicy, Query

    tenants = [f"tenant{r}" for r in range(args.reps)]
    exact = CleanRoomPolicy(
        retailer="acme",
        k=100,
        max_groups=5000,
        mode="exact",
        trusted_tenants=tenants,
        unscoped_tenants=tenants,
    )
    dp = CleanRoomPolicy(
        retailer="acme",
        k=100,
        max_groups=5000,
        unscoped_tenants=tenants,
        dp={"epsilon_budget": 1000, "room_epsilon_budget": 1000},
    )
    results: dict[str, Any] = {
        "query": "purchases, revenue BY sku, placement",
        "raw_sql": RAW_SQL,
        "k": 100,
        "reps": args.reps,
        "runs": [],
    }
    for n in args.rows:
        work = Path(tempfile.mkdtemp(prefix="rmn-bench-cr-"))
        room = CleanRoom(work / "acme.duckdb", exact)
        t = time.perf_counter()
        _generate(room, n)
        load_s = time.perf_counter() - t
        q = Query(dimensions=["sku", "placement"], metrics=["purchases", "revenue"])
        q2 = Query(dimensions=["sku", "placement"], metrics=["revenue"], date_to=dt.date(2026, 3, 1))
        times: dict[str, list[float]] = {"raw": [], "checked": [], "history": [], "dp": []}
        room._con.execute(RAW_SQL).fetchall()  # warm-up
        for tenant in tenants:  # alternate: raw, checked, history, dp
            t = time.perf_counter()
            room._con.execute(RAW_SQL).fetchall()
            times["raw"].append(time.perf_counter() - t)
            room.policy = exact
            t = time.perf_counter()
            res = room.query(tenant, q)
            times["checked"].append(time.perf_counter() - t)
            t = time.perf_counter()
            room.query(tenant, q2)
            times["history"].append(time.perf_counter() - t)
            room.policy = dp
            t = time.perf_counter()
            noisy = room.query(tenant, q)
            times["dp"].append(time.perf_counter() - t)
        ms = {name: round(statistics.median(v) * 1000, 1) for name, v in times.items()}
        run = {
            "rows": n,
            "load_s": round(load_s, 2),
            "cells_released": len(res.cells),
            "dp_cells_released": len(noisy.cells),
            "raw_ms": ms["raw"],
            "checked_ms": ms["checked"],
            "with_history_ms": ms["history"],
            "dp_ms": ms["dp"],
            "checked_ratio": round(ms["checked"] / ms["raw"], 2),
            "with_history_ratio": round(ms["history"] / ms["raw"], 2),
            "dp_ratio": round(ms["dp"] / ms["raw"], 2),
        }
        results["runs"].append(run)
        print(run, flush=True)
        room.close()
    write_results(Path("bench/results/cleanroom.json"), results)


if __name__ == "__main__":
    main()
