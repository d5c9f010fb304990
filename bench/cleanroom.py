"""Clean-room benchmark: policy-checked and DP query latency vs a raw DuckDB query computing the SAME
aggregates, the distinct-shopper count included (what k needs), with the data copied into the room's file
(``copied``) or read in place from Parquet partitioned by day (``parquet``: ``rmn cleanroom attach``).

Synthetic events (SQL-generated in DuckDB: 100k shoppers, 500 SKUs, 3 placements, 90 days); query =
purchases and revenue by sku x placement. Measured, each repetition with a new tenant: ``checked`` = mode
exact (trusted tenant): k distinct shoppers per cell, the union of its cells, room-wide difference checks,
audit and release bookkeeping (fsync'ed); ``with_history`` = the next query (revenue by sku x placement for
the first 60 days), whose populations are compared with every earlier release of the room; ``dp`` = the
same query in mode dp (contribution bounding, ledger charge, OpenDP noise on 1500 cells x 3 values).
``raw`` = ``SELECT sku, placement, <metrics>, COUNT(DISTINCT shopper_id) ... GROUP BY sku, placement`` over the
same table or the same Parquet files. Peak memory: the process's RSS sampled every 20 ms while querying, under
DuckDB's ``memory_limit`` (``--memory-limit``). Targets (issues #12, #27): checked/raw <= 2, dp/raw <= 3 at
10M rows copied and at 100M rows of Parquet. Writes ``bench/results/cleanroom.json``.
Usage: ``python -m bench.cleanroom [--rows 1000000 10000000] [--parquet-rows 100000000] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.record import write_results

AGGREGATES = (
    "sku, placement, COUNT(*) FILTER (WHERE event_type = 'purchase') AS purchases, "
    "COALESCE(SUM(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS revenue, "
    "COUNT(DISTINCT shopper_id) AS shoppers"
)
RAW_SQL = f"SELECT {AGGREGATES} FROM events GROUP BY sku, placement"

ROWS = """SELECT 'S' || (hash(i) % 100000) AS shopper_id, DATE '2026-01-01' + (i % 90)::INT AS event_date,
  CASE WHEN i % 10 = 0 THEN 'purchase' WHEN i % 10 < 3 THEN 'click' ELSE 'impression' END AS event_type,
  'SKU' || (hash(i * 7) % 500) AS sku, 'brand' || (i % 20) AS brand, 'cat' || (i % 10) AS category,
  CASE i % 3 WHEN 0 THEN 'search' WHEN 1 THEN 'display' ELSE 'offsite' END AS placement,
  1 AS quantity, 10.0 AS revenue, 0.5 AS cost, 3.0 AS margin, 40 AS stock_level, false AS promo_flag
  FROM range({n}) t(i)"""


class PeakRss:
    """The process's largest RSS while running (sampled every 20 ms)."""

    def __init__(self) -> None:
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _copied(room: Any, n: int) -> Callable[[], Any]:
    """``n`` synthetic events inserted into the room's file (batch 1); the raw query over that table."""
    con = room.store.con
    con.execute(f"INSERT INTO events SELECT *, 1, row_number() OVER (), NULL FROM ({ROWS.format(n=n)})")
    room.store.version = 1  # rows inserted behind the loader's back
    room.store.data_id = room.store._compute_data_id()
    return lambda: con.execute(RAW_SQL).fetchall()


def _parquet(room: Any, n: int, work: Path) -> Callable[[], Any]:
    """``n`` synthetic events written as Parquet partitioned by day and attached (read in place); the raw
    query over the same files."""
    import duckdb

    export = work / "export"
    duckdb.connect().execute(
        f"COPY ({ROWS.format(n=n)}) TO '{export}' (FORMAT parquet, PARTITION_BY (event_date))"
    )
    room.attach(str(export))
    con = room.store.con
    raw = RAW_SQL.replace(
        "FROM events", f"FROM read_parquet('{export}/**/*.parquet', hive_partitioning = true)"
    )
    return lambda: con.execute(raw).fetchall()


def _measure(
    room: Any, raw: Callable[[], Any], policies: dict[str, Any], tenants: list[str]
) -> dict[str, Any]:
    """Median ms per kind (alternated: raw, checked, next query, dp), cells released, peak RSS."""
    import datetime as dt

    from cleanroom import Query

    q = Query(dimensions=["sku", "placement"], metrics=["purchases", "revenue"])
    q2 = Query(dimensions=["sku", "placement"], metrics=["revenue"], date_to=dt.date(2026, 3, 1))
    times: dict[str, list[float]] = {"raw": [], "checked": [], "history": [], "dp": []}
    raw()  # warm-up
    with PeakRss() as rss:
        for tenant in tenants:
            t = time.perf_counter()
            raw()
            times["raw"].append(time.perf_counter() - t)
            room.policy = policies["exact"]
            t = time.perf_counter()
            res = room.query(tenant, q)
            times["checked"].append(time.perf_counter() - t)
            t = time.perf_counter()
            room.query(tenant, q2)
            times["history"].append(time.perf_counter() - t)
            room.policy = policies["dp"]
            t = time.perf_counter()
            noisy = room.query(tenant, q)
            times["dp"].append(time.perf_counter() - t)
    ms = {name: round(statistics.median(v) * 1000, 1) for name, v in times.items()}
    return {
        "cells_released": len(res.cells),
        "dp_cells_released": len(noisy.cells),
        "raw_ms": ms["raw"],
        "checked_ms": ms["checked"],
        "with_history_ms": ms["history"],
        "dp_ms": ms["dp"],
        "checked_ratio": round(ms["checked"] / ms["raw"], 2),
        "with_history_ratio": round(ms["history"] / ms["raw"], 2),
        "dp_ratio": round(ms["dp"] / ms["raw"], 2),
        "peak_rss_gib": round(rss.peak / 2**30, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000], help="copied cases")
    ap.add_argument("--parquet-rows", type=int, nargs="*", default=[100_000_000], help="Parquet cases")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--memory-limit", default="4GB", help="DuckDB's memory_limit for every room")
    args = ap.parse_args()

    from cleanroom import CleanRoom, CleanRoomPolicy

    tenants = [f"tenant{r}" for r in range(args.reps)]
    common = {"retailer": "acme", "k": 100, "max_groups": 5000, "unscoped_tenants": tenants}
    policies = {
        "exact": CleanRoomPolicy(**common, mode="exact", trusted_tenants=tenants, attach_files=True),
        "dp": CleanRoomPolicy(**common, dp={"epsilon_budget": 1000, "room_epsilon_budget": 1000}),
    }
    results: dict[str, Any] = {
        "query": "purchases, revenue BY sku, placement",
        "raw_sql": RAW_SQL,
        "k": 100,
        "reps": args.reps,
        "memory_limit": args.memory_limit,
        "runs": [],
    }
    cases = [("copied", n) for n in args.rows] + [("parquet", n) for n in args.parquet_rows]
    for source, n in cases:
        work = Path(tempfile.mkdtemp(prefix="rmn-bench-cr-"))
        room = CleanRoom(work / "acme.duckdb", policies["exact"], memory_limit=args.memory_limit)
        t = time.perf_counter()
        raw = _copied(room, n) if source == "copied" else _parquet(room, n, work)
        run = {"source": source, "rows": n, "load_s": round(time.perf_counter() - t, 2)}
        if source == "parquet":
            run["parquet_gib"] = round(sum(f.stat().st_size for f in work.rglob("*.parquet")) / 2**30, 2)
            run["room_file_mib"] = round((work / "acme.duckdb").stat().st_size / 2**20, 1)
        run |= _measure(room, raw, policies, tenants)
        results["runs"].append(run)
        print(run, flush=True)
        room.close()
        shutil.rmtree(work, ignore_errors=True)  # the 100M case writes GBs
    write_results(Path("bench/results/cleanroom.json"), results)


if __name__ == "__main__":
    main()
