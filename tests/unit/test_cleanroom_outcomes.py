"""Outcome independence under dp, as a property (issue #27): for every generated query, neighbouring data
sets — one shopper added or removed, including a population that is that shopper alone and one that is empty —
give the same status, the same error text, the same response shape and the same charge. Only the noisy values
(and so which cells pass the noisy threshold) may differ.

The generator is seeded (500 queries per run in ``make test`` and CI; ``make test-fast`` sets
``RMN_PROPERTY_QUERIES=100``; a new seed each day of the year so CI explores over time; the seed is in the failure
message): dimensions, metrics, filters (eq/in over SKUs present in both data sets, only in
one, absent, brand and category), date ranges (covering the target's days, none, inverted), epsilon below the
floor, at it, above the maximum, and the benchmark scope. On ce3b4b2 it fails: an ungrouped query over the lone
shopper's population answered 500 "query failed" (a NULL sum) only where that shopper is absent, and a grouping
past max_groups was refused before its charge depending on how many cells the data has.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from pathlib import Path
from typing import Any

import pytest

from cleanroom import CleanRoom, CleanRoomError, CleanRoomPolicy, Query
from tests.cleanroom_data import event, write_rows

K = 20
TENANT = "brand_x"
QUERIES = int(os.environ.get("RMN_PROPERTY_QUERIES", "500"))


def rows(with_target: bool) -> list[dict[str, object]]:
    """60 shoppers over SKUs a and b and two placements; the target shopper alone buys SKU t (3 days)."""
    out: list[dict[str, object]] = []
    for i in range(60):
        r = event(f"s{i}", "a" if i % 2 else "b", day=f"2026-01-{1 + i % 20:02d}")
        r["placement"] = "search" if i % 3 else "display"
        out.append(r)
    if with_target:
        for day in ("2026-01-03", "2026-01-09", "2026-01-21"):
            out.append({**event("target", "t", day=day), "revenue": 37.5})
        out.append({**event("target", "a", day="2026-01-21"), "revenue": 12.0})
    return out


def policy(max_groups: int) -> CleanRoomPolicy:
    return CleanRoomPolicy.model_validate(
        {
            "retailer": "acme",
            "k": K,
            "max_groups": max_groups,
            "queries_per_minute": 100_000,
            "unscoped_tenants": [TENANT],
            "benchmark": {"dimensions": ["category"], "k_factor": 1},
            "dp": {
                "epsilon_per_query": 1.0,
                "max_epsilon_per_query": 4.0,
                "epsilon_budget": 100_000.0,
                "room_epsilon_budget": 100_000.0,
                "max_delta_per_query": 0.001,
            },
        }
    )


def query(rng: random.Random) -> dict[str, Any]:
    """One generated query body (valid or not: refusals must not depend on the data either)."""
    q: dict[str, Any] = {
        "dimensions": rng.sample(["sku", "placement", "event_date", "category"], rng.randint(0, 2)),
        "metrics": rng.sample(["revenue", "purchases", "units", "spend", "clicks"], rng.randint(1, 3)),
    }
    filters = []
    for _ in range(rng.randint(0, 2)):
        column = rng.choice(["sku", "sku", "brand", "category", "placement"])
        values = {"sku": ["a", "b", "t", "nope"], "brand": ["brewmax", "other"], "category": ["coffee", "tea"],
                  "placement": ["search", "display"]}[column]  # fmt: skip
        if rng.random() < 0.5:
            filters.append({"column": column, "op": "eq", "value": rng.choice(values)})
        else:
            filters.append({"column": column, "op": "in", "value": rng.sample(values, rng.randint(1, 2))})
    if filters:
        q["filters"] = filters
    if rng.random() < 0.3:
        start = dt.date(2026, 1, rng.randint(1, 25))
        q["date_from"] = start.isoformat()
        q["date_to"] = (start + dt.timedelta(days=rng.randint(-2, 10))).isoformat()
    if rng.random() < 0.3:
        q["epsilon"] = rng.choice([0.1, 0.25, 1.0, 2.5, 4.0, 9.0])
    if rng.random() < 0.1:
        q["scope"] = "benchmark"
    return q


def outcome(room: CleanRoom, body: dict[str, Any]) -> tuple[Any, ...]:
    """What may not depend on the data: status (error class and text), shape, charge."""
    try:
        q = Query.model_validate(body)
    except ValueError as e:
        return ("invalid", str(e))
    before = room.budget(TENANT)
    try:
        res = room.query(TENANT, q)
    except CleanRoomError as e:
        return ("refused", type(e).__name__, str(e), room.budget(TENANT) == before)
    keys = sorted({key for cell in res.cells for key in cell}) or None
    expected = sorted([*q.dimensions, *q.metrics])
    return (
        "answered",
        keys in (None, expected),  # every released cell has exactly the asked-for columns
        res.suppressed_cells,
        res.remainder,
        res.remainder_released,
        res.epsilon_spent,
        res.delta_spent,
        res.noisy,
        res.stored_answer,
        len(res.cells) <= room.policy.max_groups,
        sorted(res.blocked_fields),
    )


@pytest.mark.parametrize("max_groups", [1000, 3])
def test_dp_outcomes_do_not_depend_on_one_shopper(tmp_path: Path, max_groups: int) -> None:
    seed = dt.date.today().timetuple().tm_yday * 1000 + max_groups
    rng = random.Random(seed)
    rooms = []
    for name, with_target in (("with", True), ("without", False)):
        room = CleanRoom(tmp_path / f"{name}.duckdb", policy(max_groups))
        room.load(write_rows(tmp_path / f"{name}.csv", rows(with_target)))
        rooms.append(room)
    answered = 0
    try:
        for n in range(QUERIES):
            body = query(rng)
            a, b = (outcome(room, body) for room in rooms)
            assert a == b, f"seed {seed}, query {n}: {body}\nwith the target: {a}\nwithout it: {b}"
            answered += a[0] == "answered"
    finally:
        for room in rooms:
            room.close()
    assert answered >= QUERIES // 5  # the generator reaches the answering paths, not only refusals
