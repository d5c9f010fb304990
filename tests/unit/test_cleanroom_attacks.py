"""Attacks on the clean room, written as an attacker would, one case per attack class (issue #12).

Planted data: groups X and Y (300 shoppers each, far above k=100) and one target shopper whose revenue
is 37.5 on SKU "t" (3 active days) and 12.25 on SKU "c". Under the default policy (mode dp) every attack
is refused or charged, and the attacker's estimate stays off by about the noise the charged epsilon
implies (never exact); in mode exact, only trusted partners may ask, and the pairwise attacks are
refused room-wide, on rows. What each mode does not defend is in docs/cleanroom.md ("Threat model").
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cleanroom import (
    AccessDenied,
    BudgetExhausted,
    CleanRoom,
    CleanRoomError,
    CleanRoomPolicy,
    PolicyViolation,
    Querier,
    Query,
)
from tests.cleanroom_data import event, write_rows

K = 100
TARGET_T, TARGET_C = 37.5, 12.25
ATTACKER, ACCOMPLICE = "brand_x", "brand_y"


def planted(path: Path) -> Path:
    rows: list[dict[str, object]] = []
    for g in ("x", "y"):
        for i in range(300):
            r = event(f"{g}{i}", g, day=f"2026-01-{1 + i % 28:02d}")
            r["revenue"] = 10.0 + i % 7
            rows.append(r)
    for day, sku, revenue in (("2026-01-03", "t", TARGET_T / 3), ("2026-01-09", "t", TARGET_T / 3)):
        rows.append({**event("target", sku, day=day), "revenue": revenue})
    rows.append({**event("target", "t", day="2026-01-20"), "revenue": TARGET_T / 3})
    rows.append({**event("target", "c", day="2026-01-20"), "revenue": TARGET_C})
    rows.append({**event("x0", "c", day="2026-01-20"), "revenue": 0.0})  # X's first shopper bought c too
    return write_rows(path, rows)


def policy(**fields: Any) -> CleanRoomPolicy:
    """The default policy (mode dp) with the test tenants seeing every brand."""
    return CleanRoomPolicy.model_validate(
        {"retailer": "acme", "k": K, "unscoped_tenants": [ATTACKER, ACCOMPLICE, "c", "d"], **fields}
    )


def exact(**fields: Any) -> CleanRoomPolicy:
    return policy(mode="exact", trusted_tenants=[ATTACKER, ACCOMPLICE], **fields)


def room_at(tmp_path: Path, p: CleanRoomPolicy, name: str = "acme") -> CleanRoom:
    room = CleanRoom(tmp_path / f"{name}.duckdb", p)
    room.load(planted(tmp_path / "events.csv"))
    return room


def skus(*values: str, **extra: Any) -> Query:
    return Query.model_validate(
        {"metrics": ["revenue"], "filters": [{"column": "sku", "op": "in", "value": list(values)}], **extra}
    )


def revenue(res: Any) -> float:
    return float(res.cells[0]["revenue"]) if res.cells else 0.0


def tracker(room: CleanRoom, tenants: tuple[str, str, str] = (ATTACKER,) * 3) -> float:
    """P1 = X + target, P2 = X + Y, P3 = Y + target: (P1 + P3 - P2) / 2 = the target."""
    p1 = revenue(room.query(tenants[0], skus("x", "t")))
    p2 = revenue(room.query(tenants[1], skus("x", "y")))
    p3 = revenue(room.query(tenants[2], skus("y", "t")))
    return (p1 + p3 - p2) / 2


def same_population(room: CleanRoom, tenants: tuple[str, ...] = (ATTACKER, ATTACKER)) -> float:
    """The same shoppers (X plus the target), different rows: SKU c adds the target's c purchase only."""
    a = revenue(room.query(tenants[0], skus("x", "t")))
    b = revenue(room.query(tenants[1], skus("x", "t", "c")))
    return b - a


def _noise_sd(p: CleanRoomPolicy, n_metrics: int = 1) -> float:
    """Standard deviation of one noisy revenue sum at the policy's default epsilon."""
    dp = p.dp
    eps_metric = dp.epsilon_per_query * (1 - dp.count_share) / n_metrics
    scale = dp.max_cells_per_shopper * dp.metric_bounds["revenue"] / eps_metric
    return math.sqrt(2) * scale


def _estimates(tmp_path: Path, attack: Any, trials: int) -> list[float]:
    """``trials`` independent runs of ``attack``: each by a new tenant (fresh noise: stored answers are
    per tenant) in one room whose budgets are raised so that all of them are paid for."""
    room = room_at(tmp_path, policy(dp={"epsilon_budget": 1000, "room_epsilon_budget": 1000}))
    room.policy = room.policy.model_copy(update={"unscoped_tenants": [f"t{i}" for i in range(trials)]})
    return [attack(room, (f"t{i}",) * 3) for i in range(trials)]


# ---- the attacks that recover a value: DP leaves the noise, exact mode refuses ----------------------
@pytest.mark.parametrize(
    ("attack", "truth", "sd_factor"),
    [
        (tracker, TARGET_T, math.sqrt(3) / 2),  # three noisy sums, halved
        (same_population, TARGET_C, math.sqrt(2)),  # two noisy sums
    ],
    ids=["tracker", "same-population"],
)
def test_value_attacks_under_dp_are_off_by_the_noise(
    tmp_path: Path, attack: Any, truth: float, sd_factor: float
) -> None:
    errors = [e - truth for e in _estimates(tmp_path, attack, trials=60)]
    expected = _noise_sd(policy()) * sd_factor  # ~980 (tracker) and ~1,600 (same population)
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert all(abs(e) > 1e-6 for e in errors)  # never exact
    assert 0.4 * expected < rms < 2.5 * expected, (rms, expected)
    assert expected > 10 * truth  # the noise dwarfs what the attacker wants to learn


def test_tracker_in_exact_mode_is_for_trusted_partners_only(tmp_path: Path) -> None:
    room = room_at(tmp_path, exact())
    with pytest.raises(AccessDenied, match="trusted partners only"):
        tracker(room, ("c", "c", "c"))  # an unscoped but untrusted tenant
    assert [e["decision"] for e in room.audit.entries()] == ["refused"]


def test_same_population_in_exact_mode_is_refused_on_rows(tmp_path: Path) -> None:
    room = room_at(tmp_path, exact())
    with pytest.raises(PolicyViolation, match="differencing"):
        same_population(room)  # same 301 shoppers, but the second query has the target's c row more


def test_two_tenants_in_exact_mode_difference_against_one_history(tmp_path: Path) -> None:
    room = room_at(tmp_path, exact())
    with pytest.raises(PolicyViolation, match="any tenant"):
        same_population(room, (ATTACKER, ACCOMPLICE))
    fresh = room_at(tmp_path / "fresh", exact())
    fresh.query(ATTACKER, skus("x"))  # X alone
    with pytest.raises(PolicyViolation, match="differencing"):  # X + the target, by another tenant
        fresh.query(ACCOMPLICE, skus("x", "t"))


def test_colluding_tenants_share_the_room_budget(tmp_path: Path) -> None:
    """Four tenants with 10 epsilon each; the room has 30 (the default): the fourth runs dry."""
    room = room_at(tmp_path, policy())
    spent = 0
    with pytest.raises(BudgetExhausted, match="this room's 30"):
        for tenant in (ATTACKER, ACCOMPLICE, "c", "d"):
            for i in range(10):
                room.query(tenant, skus("x", "y", epsilon=1.0, date_to=f"2026-01-{28 - i}"))
                spent += 1
    assert spent == 30 and room.budget("d", room_view=True)["room_epsilon_remaining"] == 0
    assert room.budget("d")["epsilon_available"] == 0  # what "d" may still spend: nothing, though it has 10


def test_the_budget_view_shows_no_other_tenants_activity(tmp_path: Path) -> None:
    """An attacker polls its own budget while a victim queries: nothing it sees moves (while the room is not
    what binds), so the endpoint is no side channel on other tenants' activity."""
    room = room_at(tmp_path, policy())
    seen = room.budget(ATTACKER)
    assert not any(key.startswith("room_") for key in seen)
    for i in range(3):
        room.query(ACCOMPLICE, skus("x", "y", epsilon=1.0, date_to=f"2026-01-{28 - i}"))
        assert room.budget(ATTACKER) == seen
    assert room.budget(ATTACKER, room_view=True)["room_epsilon_spent"] == 3.0  # an operator sees the room


# ---- the budget -------------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [1e-300, 1e-9, 5e-324, 1e-308, 0.2499999])
def test_a_tiny_epsilon_after_exhaustion_is_refused_and_moves_nothing(tmp_path: Path, epsilon: float) -> None:
    room = room_at(tmp_path, policy())
    for i in range(5):
        room.query(ATTACKER, skus("x", "y", epsilon=2.0 - i / 1000))  # 9.99 of 10
    before = room.ledger.path.read_text()
    with pytest.raises(PolicyViolation, match="below the policy's floor"):
        room.query(ATTACKER, skus("x", "t", epsilon=epsilon))
    with pytest.raises(BudgetExhausted):  # the floor itself no longer fits
        room.query(ATTACKER, skus("x", "t", epsilon=0.25))
    assert room.ledger.path.read_text() == before
    assert room.audit.entries()[-1]["decision"] == "refused"


def test_charges_are_exact_integers_and_never_round_away(tmp_path: Path) -> None:
    room = room_at(tmp_path, policy())
    for i in range(7):
        room.query(ATTACKER, skus("x", "y", epsilon=0.25 + 1e-7 * (i + 1)))  # rounds up to 0.250001
    lines = [json.loads(x) for x in room.ledger.path.read_text().splitlines()]
    assert [x["micro"] for x in lines] == [250_001] * 7
    assert room.budget(ATTACKER)["epsilon_spent"] == pytest.approx(1.750007, abs=1e-12)


@pytest.mark.parametrize("how", ["restart", "rebuild"])
def test_budgets_and_stored_answers_survive_a_restart_and_a_rebuild(tmp_path: Path, how: str) -> None:
    state = tmp_path / "state" / "acme@seed7"
    room = CleanRoom(tmp_path / "a.duckdb", policy(), state=state)
    events = planted(tmp_path / "events.csv")
    room.load(events)
    first = room.query(ATTACKER, skus("x", "y", epsilon=2.0))
    for i in range(3):
        room.query(ATTACKER, skus("x", epsilon=2.0 - i / 100))
    room.close()
    if how == "rebuild":  # a fresh database file from the same data, the state kept with the deployment
        again = CleanRoom(tmp_path / "b.duckdb", policy(), state=state)
        again.load(events)
    else:
        again = CleanRoom(tmp_path / "a.duckdb", policy(), state=state)
    assert again.budget(ATTACKER)["epsilon_spent"] == pytest.approx(7.97)
    repeat = again.query(ATTACKER, skus("x", "y", epsilon=2.0))
    assert repeat.stored_answer and repeat.cells == first.cells  # no fresh noise to average
    again.query(ATTACKER, skus("y", epsilon=2.0))  # 9.97 of 10
    with pytest.raises(BudgetExhausted):
        again.query(ATTACKER, skus("t", epsilon=0.25))


# ---- exact mode: sums of cells, and refusals that would answer a membership question ---------------
def split_room(tmp_path: Path, with_target: bool = True) -> CleanRoom:
    """X and Y (300 shoppers each) split evenly over placements search/display; the target bought SKU t
    through search (absent from the neighbouring data set when ``with_target`` is false)."""
    rows: list[dict[str, object]] = []
    for g in ("x", "y"):
        for i in range(300):
            rows.append({**event(f"{g}{i}", g), "placement": ("search", "display")[i % 2]})
    if with_target:
        rows.append({**event("target", "t"), "revenue": TARGET_T})
    room = CleanRoom(tmp_path / "acme.duckdb", exact())
    room.load(write_rows(tmp_path / "split.csv", rows))
    return room


def by_placement(*values: str) -> Query:
    return skus(*values, dimensions=["placement"])


@pytest.mark.parametrize("order", ["grouped-first", "total-first"])
@pytest.mark.parametrize("tenants", [(ATTACKER, ATTACKER), (ATTACKER, ACCOMPLICE)], ids=["one", "two"])
def test_a_sum_of_cells_minus_a_total_is_refused(
    tmp_path: Path, order: str, tenants: tuple[str, str]
) -> None:
    """(X + target) by placement gives cells of 151 and 150 shoppers — each far from X alone (300) — but
    their sum minus X's total is the target's revenue: the union of the cells (301) is compared too."""
    room = split_room(tmp_path)
    first, second = (
        (by_placement("x", "t"), skus("x"))
        if order == "grouped-first"
        else (skus("x"), by_placement("x", "t"))
    )
    room.query(tenants[0], first)
    with pytest.raises(PolicyViolation, match="differencing"):
        room.query(tenants[1], second)


def test_whether_a_probe_is_refused_does_not_depend_on_the_target(tmp_path: Path) -> None:
    """Membership probe: after X + t, ask X alone. The target in t makes the two differ by one shopper
    (refused); without the target they are the same shoppers — answering that would say "t is empty"."""
    outcomes = []
    for with_target in (True, False):
        room = split_room(tmp_path / str(with_target), with_target)
        room.query(ATTACKER, skus("x", "t"))
        try:
            room.query(ACCOMPLICE, skus("x"))
            outcomes.append("answered")
        except PolicyViolation as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1] and "differencing" in outcomes[0]


def test_drilling_into_the_same_rows_is_answered(tmp_path: Path) -> None:
    """Refusing zero differences covers differently selected rows only: the same filters grouped another
    way, or the same query after new data, are answered."""
    room = split_room(tmp_path)
    total = revenue(room.query(ATTACKER, skus("x", "y")))
    cells = room.query(ACCOMPLICE, by_placement("x", "y")).cells
    assert sum(c["revenue"] for c in cells) == total
    by_day = room.query(ATTACKER, skus("x", "y", dimensions=["event_date"]))
    assert by_day.remainder_released or by_day.cells


def test_exact_mode_says_how_many_cells_were_withheld_only_when_the_policy_opts_in(tmp_path: Path) -> None:
    q = Query(dimensions=["sku"], metrics=["revenue"])
    quiet = room_at(tmp_path / "quiet", exact()).query(ATTACKER, q)
    told = room_at(tmp_path / "told", exact(report_suppressed_cells=True)).query(ATTACKER, q)
    assert quiet.cells == told.cells
    assert quiet.suppressed_cells is None and "withheld" in str(quiet.suppression_reason)
    assert told.suppressed_cells == 2  # SKUs t and c: one and two shoppers


# ---- what exists, and what refusals say ------------------------------------------------------------
def test_the_targets_active_days_are_not_listed(tmp_path: Path) -> None:
    """Group by day, filtered to the target's SKU: its 3 cells have one shopper each."""
    room = room_at(tmp_path, policy(dp={"epsilon_budget": 100, "room_epsilon_budget": 100}))
    q = {
        "dimensions": ["event_date"],
        "metrics": ["revenue"],
        "filters": [{"column": "sku", "op": "eq", "value": "t"}],
    }
    released = []
    for i in range(40):
        res = room.query(ATTACKER, Query.model_validate({**q, "epsilon": 1.0 + i / 40}))
        released += res.cells
        assert res.suppressed_cells is None and res.delta_spent <= 1e-6  # no exact count of anything
    assert released == []
    with pytest.raises(PolicyViolation, match="too small to decide which cells exist"):
        room.query(ATTACKER, Query.model_validate({**q, "epsilon": 0.25}))
    exact_room = room_at(tmp_path / "exact", exact())
    res = exact_room.query(ATTACKER, Query.model_validate(q))
    assert res.cells == [] and res.remainder is None  # 3 cells of 1 shopper: nothing, the remainder too


def test_refusals_never_state_exact_counts(tmp_path: Path) -> None:
    room = room_at(tmp_path, exact(max_groups=5))
    messages = []
    room.query(ATTACKER, skus("x", "t"))
    for q in (skus("x", "t", "c"), Query(dimensions=["event_date"], metrics=["revenue"])):
        with pytest.raises(PolicyViolation) as e:
            room.query(ATTACKER, q)
        messages.append(str(e.value))
    numbers = {int(n) for m in messages for n in re.findall(r"\d+", m)}
    assert numbers <= {K, 5}, messages  # only the policy's k and max_groups


# ---- hostile input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query",
    [
        {"metrics": ["revenue"], "filters": [{"column": "sku", "op": "eq", "value": "a\ud800"}]},
        {"metrics": ["revenue"], "filters": [{"column": "sku\udfff", "op": "eq", "value": "a"}]},
        {"metrics": ["revenue\ud800"]},
        {"metrics": ["revenue"], "filters": [{"column": "sku", "op": "in", "value": ["a"] * 101}]},
        {"metrics": ["revenue"], "epsilon": float("inf")},
        {"metrics": ["revenue"], "epsilon": -0.0},
        {"metrics": ["revenue"], "filters": [[[[{"column": "sku"}]]]]},
    ],
)
def test_malformed_queries_are_refused_before_anything_is_written(tmp_path: Path, query: dict) -> None:
    room = room_at(tmp_path, policy())
    with pytest.raises(ValidationError):
        room.query(ATTACKER, Query.model_validate(query))
    assert not room.ledger.path.exists() and room.audit.entries() == []


# ---- data integrity --------------------------------------------------------------------------------
def test_loading_the_same_file_twice_loads_it_once(tmp_path: Path) -> None:
    room = room_at(tmp_path, exact())
    before = room.query(ATTACKER, skus("x", "y"))
    report = room.load_file(tmp_path / "events.csv")
    assert report.already_loaded and report.rows == 0 and room.version == 1
    again = room.query(ATTACKER, skus("x", "y"))
    assert again.stored_answer and again.cells == before.cells


def test_events_load_once_by_id_and_new_data_gets_a_new_answer(tmp_path: Path) -> None:
    room = room_at(tmp_path, exact())
    before = room.query(ATTACKER, skus("x", "y"))
    rows = [{**event(f"n{i}", "x"), "event_id": f"e{i}"} for i in range(K)]
    first = room.load_file(write_rows_with_id(tmp_path / "a.csv", rows))
    second = room.load_file(
        write_rows_with_id(tmp_path / "b.csv", [*rows, {**event("z", "x"), "event_id": "z1"}])
    )
    assert (first.rows, second.rows, second.duplicate_events) == (K, 1, K)
    after = room.query(ATTACKER, skus("x", "y"))  # same question, new data: a new answer
    assert not after.stored_answer and revenue(after) == pytest.approx(revenue(before) + 10.0 * (K + 1))


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("revenue", "1e308", "row 2: revenue is above the policy's bound"),
        ("quantity", "99999999", "row 2: quantity is above the policy's bound"),
        ("shopper_id", "   ", "row 2: shopper_id is blank"),
        ("shopper_id", "\t", "row 2: shopper_id is blank"),  # one identity for every tab-only row: no
        ("shopper_id", "\u00a0\u2003", "row 2: shopper_id is blank"),  # distinct-shopper count is honest then
        ("shopper_id", "\t\r\n ", "row 2: shopper_id is blank"),
        ("event_type", "refund", "row 2: event_type is not one of"),
    ],
)
def test_absurd_rows_are_refused_with_their_row_number(
    tmp_path: Path, column: str, value: str, reason: str
) -> None:
    room = room_at(tmp_path, exact())
    bad = event("x1", "x")
    bad[column] = value
    with pytest.raises(CleanRoomError, match=reason):
        room.load(write_rows(tmp_path / "bad.csv", [event("ok", "x"), bad, event("ok2", "x")]))
    assert room.version == 1 and math.isfinite(revenue(room.query(ATTACKER, skus("x", "y"))))


# ---- brand scope -----------------------------------------------------------------------------------
def test_a_brand_reaches_only_its_own_rows(tmp_path: Path) -> None:
    rows = [{**event(f"s{i}", "mine"), "brand": "acme_brand"} for i in range(K)]
    rows += [{**event(f"r{i}", "theirs"), "brand": "rival"} for i in range(K)]
    p = CleanRoomPolicy(retailer="acme", k=K, benchmark={"dimensions": ["category"], "k_factor": 2})
    room = CleanRoom(tmp_path / "acme.duckdb", p)
    room.load(write_rows(tmp_path / "scoped.csv", rows))
    me = Querier("acme_brand", p.brand_scope("acme_brand", "manufacturer", manufacturer="acme_brand"))
    assert me.brands == {"acme_brand"}
    res = room.query(me, Query(dimensions=["sku"], metrics=["purchases"], epsilon=2.0))
    assert {c["sku"] for c in res.cells} <= {"mine"}  # the rival's SKU cannot appear
    with pytest.raises(AccessDenied, match="outside your scope"):
        room.query(
            me,
            Query.model_validate(
                {
                    "metrics": ["revenue"],
                    "filters": [{"column": "brand", "op": "in", "value": ["acme_brand", "rival"]}],
                }
            ),
        )
    bench = room.query(me, Query(dimensions=["category"], metrics=["purchases"], scope="benchmark"))
    assert all(set(c) == {"category", "purchases"} for c in bench.cells)  # coarse, across both brands
    with pytest.raises(PolicyViolation, match="benchmark groups only by"):
        room.query(me, Query(dimensions=["sku"], metrics=["purchases"], scope="benchmark"))
    nobody = Querier("agency_z", p.brand_scope("agency_z", "agency"))
    with pytest.raises(AccessDenied, match="no brand"):
        room.query(nobody, Query(metrics=["purchases"]))
    # a tenant that sees no brand got cross-brand benchmark totals before: now refused, and audited
    with pytest.raises(AccessDenied, match="this tenant sees no brand here"):
        room.query(nobody, Query(dimensions=["category"], metrics=["purchases"], scope="benchmark"))
    last = room.audit.entries()[-1]
    assert (last["tenant"], last["decision"]) == ("agency_z", "refused")


# ---- data versions, trust, the CLI's refusals ------------------------------------------------------
def test_a_data_version_is_never_reused_after_a_duplicate_only_load_and_a_restart(tmp_path: Path) -> None:
    """A load whose rows were all duplicates, then a restart: the next load got the same version number as
    that empty load, so two different data states looked alike to the release history."""
    room = CleanRoom(tmp_path / "acme.duckdb", exact())
    rows = [{**event(f"s{i}", "x"), "event_id": f"e{i}"} for i in range(K)]
    room.load(write_rows_with_id(tmp_path / "a.csv", rows))
    empty = room.load_file(write_rows_with_id(tmp_path / "b.csv", [*rows[:3], *rows[5:7]]))
    assert (empty.rows, empty.duplicate_events, room.version) == (0, 5, 2)
    before = room.data_id
    room.close()
    reopened = CleanRoom(tmp_path / "acme.duckdb", exact())
    assert reopened.version == 2 and reopened.data_id == before  # nothing forgotten by the restart
    more = reopened.load_file(
        write_rows_with_id(tmp_path / "c.csv", [{**event("target", "x"), "event_id": "t1"}])
    )
    assert more.batch == 3 and reopened.version == 3 and reopened.data_id != before


def test_revoked_trust_gets_no_stored_exact_answer(tmp_path: Path) -> None:
    """A partner removed from trusted_tenants asked its earlier query again: the stored exact answer came back."""
    room = room_at(tmp_path, exact())
    assert room.query(ATTACKER, skus("x", "y")).cells
    room.close()
    revoked = CleanRoom(tmp_path / "acme.duckdb", policy(mode="exact", trusted_tenants=[ACCOMPLICE]))
    with pytest.raises(AccessDenied, match="trusted partners only"):
        revoked.query(ATTACKER, skus("x", "y"))  # the identical query: no stored answer either
    assert revoked.audit.entries()[-1]["decision"] == "refused"
    dp = CleanRoom(tmp_path / "acme.duckdb", policy())  # the room switched to dp: no exact answer survives
    assert not dp.query(ATTACKER, skus("x", "y")).stored_answer


def test_cli_refusals_are_audited_like_the_services(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from serving.cli import main

    pol = tmp_path / "policy.yaml"
    pol.write_text(yaml.safe_dump(exact().model_dump(mode="json")))
    db = tmp_path / "acme.duckdb"
    room_at(tmp_path, exact()).close()
    base = ["cleanroom", "query", "--db", str(db), "--policy", str(pol)]
    assert main([*base, "--tenant", "stranger", "--query", '{"metrics": ["revenue"]}']) == 1
    assert (
        main([*base, "--tenant", ATTACKER, "--query", '{"metrics": ["revenue"], "scope": "everything"}']) == 1
    )
    assert main([*base, "--tenant", ATTACKER, "--query", "{not json"]) == 1
    entries = CleanRoom(db, exact()).audit.entries()[-3:]
    assert [(e["tenant"], e["decision"]) for e in entries] == [
        ("stranger", "refused"),
        (ATTACKER, "refused"),
        (ATTACKER, "refused"),
    ]
    assert "not declared" in entries[0]["reason"] and "invalid query" in entries[1]["reason"]


def write_rows_with_id(path: Path, rows: list[dict[str, object]]) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_a_query_that_fails_after_its_charge_stays_charged_and_is_audited_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cleanroom import QueryFailed

    room = room_at(tmp_path, policy())

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sampler exploded")

    monkeypatch.setattr("cleanroom.private.laplace", broken)
    with pytest.raises(QueryFailed, match="stays charged"):
        room.query(ATTACKER, skus("x", "y"))
    assert room.budget(ATTACKER)["epsilon_spent"] == 1.0  # charged before any noisy value existed
    last = room.audit.entries()[-1]
    assert last["decision"] == "failed" and last["epsilon_spent"] == 1.0 and "RuntimeError" in last["reason"]


def test_budgets_refresh_when_the_policy_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    now = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    room = room_at(tmp_path, policy(dp={"budget_refresh_days": 7}))
    for i in range(5):
        room.query(ATTACKER, skus("x", "y", epsilon=2.0, date_to=f"2026-01-{20 + i}"))
    with pytest.raises(BudgetExhausted):
        room.query(ATTACKER, skus("x", epsilon=0.25))
    period_end = room.budget(ATTACKER)["period_ends"]
    now[0] = period_end + 1  # the next period
    assert room.budget(ATTACKER)["epsilon_spent"] == 0
    assert room.query(ATTACKER, skus("x", epsilon=0.25)).noisy
    reopened = CleanRoom(tmp_path / "acme.duckdb", room.policy)  # the periods are in the durable ledger
    assert reopened.budget(ATTACKER)["epsilon_spent"] == 0.25
