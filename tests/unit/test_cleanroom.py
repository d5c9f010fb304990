"""Clean room core: k DISTINCT shoppers per released cell, remainder rows, allowlists, injection."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cleanroom import CleanRoom, CleanRoomError, CleanRoomPolicy, PolicyViolation, Query
from tests.cleanroom_data import exact_policy, write_events

K = 5


@pytest.fixture
def room(tmp_path: Path) -> CleanRoom:
    path = write_events(tmp_path / "events.csv", K)
    r = CleanRoom(tmp_path / "acme.duckdb", exact_policy(k=K))
    assert r.load(path) == K + (K - 1) + (K + 1) + 500
    return r


def test_cells_need_k_distinct_shoppers_not_k_rows(room: CleanRoom) -> None:
    res = room.query("brand_x", Query(dimensions=["sku"], metrics=["purchases", "revenue"]))
    released = {c["sku"]: c for c in res.cells}
    assert set(released) == {"at_k", "above_k"}
    assert released["at_k"]["purchases"] == K and released["above_k"]["revenue"] == 10.0 * (K + 1)
    assert res.suppressed_cells == 2 and res.suppression_reason == f"fewer than {K} distinct shoppers"
    # remainder = below_k (k-1 shoppers) + one_shopper (1) = k distinct shoppers -> released
    assert res.remainder_released and res.remainder == {
        "purchases": (K - 1) + 500,
        "revenue": 10.0 * (K - 1 + 500),
    }


def test_remainder_below_k_is_suppressed_too(room: CleanRoom) -> None:
    from cleanroom.query import Filter

    q = Query(
        dimensions=["sku"],
        metrics=["purchases"],
        filters=[Filter(column="sku", op="in", value=["at_k", "one_shopper"])],
    )
    res = room.query("brand_x", q)
    assert [c["sku"] for c in res.cells] == ["at_k"]
    assert res.suppressed_cells == 1 and not res.remainder_released and res.remainder is None


def test_whole_table_aggregate_obeys_k(room: CleanRoom) -> None:
    from cleanroom.query import Filter

    alone = room.query(
        "brand_x", Query(metrics=["revenue"], filters=[Filter(column="sku", op="eq", value="one_shopper")])
    )
    assert alone.cells == [] and alone.suppressed_cells == 1
    everyone = room.query("brand_x", Query(metrics=["purchases"]))
    assert everyone.cells == [{"purchases": K + (K - 1) + (K + 1) + 500}]


def test_blocked_dimensions_are_dropped_and_reported(room: CleanRoom) -> None:
    res = room.query("brand_x", Query(dimensions=["sku", "margin", "shopper_id"], metrics=["purchases"]))
    assert res.blocked_fields == ["margin", "shopper_id"]
    assert all(set(c) == {"sku", "purchases"} for c in res.cells)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"dimensions": ['sku" FROM events; --'], "metrics": ["purchases"]}, "unknown dimension"),
        ({"dimensions": ["sku/*x*/"], "metrics": ["purchases"]}, "unknown dimension"),
        ({"dimensions": ["ｓｋｕ"], "metrics": ["purchases"]}, "unknown dimension"),
        ({"dimensions": ["quantity"], "metrics": ["purchases"]}, "not allowed"),
        ({"metrics": ["max_revenue"]}, "not allowed"),
        ({"metrics": ["shoppers"]}, "not allowed"),
        (
            {"metrics": ["purchases"], "filters": [{"column": "shopper_id", "op": "eq", "value": "whale"}]},
            "identity or blocked",
        ),
        (
            {"metrics": ["purchases"], "filters": [{"column": "margin", "op": "eq", "value": "3"}]},
            "identity or blocked",
        ),
        (
            {"metrics": ["purchases"], "filters": [{"column": "event_type", "op": "eq", "value": "click"}]},
            "not allowed",
        ),
        (
            {"metrics": ["purchases"], "filters": [{"column": "sku", "op": "eq", "value": ["a", "b"]}]},
            "one value",
        ),
        ({"metrics": ["purchases"], "date_from": "2026-02-01", "date_to": "2026-01-01"}, "after"),
        ({"dimensions": ["sku", "sku"], "metrics": ["purchases"]}, "twice"),
    ],
)
def test_policy_violations(room: CleanRoom, query: dict, reason: str) -> None:
    with pytest.raises(PolicyViolation, match=reason):
        room.query("brand_x", Query.model_validate(query))


@pytest.mark.parametrize(
    "query",
    [
        {"metrics": ["purchases"], "sql": "SELECT 1"},
        {"metrics": []},
        {"metrics": ["purchases"], "date_from": "NaN"},
        {"metrics": ["purchases"], "date_from": "2026-13-45"},
        {"metrics": ["purchases"], "filters": [{"column": "sku", "op": "eq", "value": "x" * 201}]},
        {"metrics": ["purchases"], "filters": [{"column": "sku", "op": "like", "value": "%"}]},
        {"metrics": ["purchases"], "dimensions": ["x" * 10] * 6},
    ],
)
def test_malformed_queries_are_refused_before_sql(query: dict) -> None:
    with pytest.raises(ValidationError):
        Query.model_validate(query)


def test_injection_through_values_is_just_a_value(room: CleanRoom) -> None:
    from cleanroom.query import Filter

    evil = "x'); DROP TABLE events; --"
    res = room.query(
        "brand_x", Query(metrics=["purchases"], filters=[Filter(column="sku", op="eq", value=evil)])
    )
    assert res.cells == [] and res.suppressed_cells == 1
    assert room.query("brand_x", Query(metrics=["purchases"])).cells  # the table is still there


def test_max_groups(tmp_path: Path, room: CleanRoom) -> None:
    room.policy = room.policy.model_copy(update={"max_groups": 2})
    with pytest.raises(PolicyViolation, match="more cells than the policy's 2"):
        room.query("brand_x", Query(dimensions=["sku"], metrics=["purchases"]))


def test_loader_checks_the_schema(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("shopper_id,sku\nx,y\n")
    r = CleanRoom(tmp_path / "db.duckdb", exact_policy())
    with pytest.raises(CleanRoomError, match="missing columns"):
        r.load(bad)
    with pytest.raises(CleanRoomError, match=r"\.csv or \.parquet"):
        r.load(tmp_path / "data.json")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"allowed_dimensions": ["shopper_id"]}, "cannot be a dimension"),
        ({"blocked_fields": ["nope"]}, "unknown column"),
        ({"allowed_metrics": ["max_revenue"]}, "unknown metrics"),
        ({"k": 1}, "greater than or equal to 2"),
    ],
)
def test_policy_validation(fields: dict, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        CleanRoomPolicy(retailer="acme", **fields)


def _skus(*skus: str) -> Query:
    from cleanroom.query import Filter

    return Query(metrics=["purchases"], filters=[Filter(column="sku", op="in", value=list(skus))])


def test_complement_pair_is_refused(room: CleanRoom) -> None:
    first = room.query("brand_x", _skus("at_k", "above_k"))  # 2k+1 shoppers
    assert first.cells
    with pytest.raises(PolicyViolation, match="differencing"):  # + below_k: k-1 more shoppers
        room.query("brand_x", _skus("at_k", "above_k", "below_k"))
    with pytest.raises(PolicyViolation, match="differencing"):  # + the single whale: 1 more shopper
        room.query("brand_x", _skus("at_k", "above_k", "one_shopper"))
    # differences of k or more are fine; another tenant differences against the same room-wide history
    assert room.query("brand_x", _skus("at_k")).cells  # differs by k+1
    with pytest.raises(PolicyViolation, match="any tenant"):
        room.query("brand_y", _skus("at_k", "above_k", "below_k"))


def test_identical_query_gets_the_identical_answer_and_everything_is_audited(
    room: CleanRoom, tmp_path: Path
) -> None:
    q = Query(dimensions=["sku"], metrics=["revenue"])
    a = room.query("brand_x", q)
    b = room.query("brand_x", Query.model_validate(q.model_dump()))
    assert b.stored_answer and not a.stored_answer and (a.cells, a.remainder) == (b.cells, b.remainder)
    with pytest.raises(PolicyViolation):
        room.query(
            "brand_x",
            Query(metrics=["purchases"], filters=[{"column": "shopper_id", "op": "eq", "value": "w"}]),
        )  # type: ignore[list-item]
    entries = room.audit.entries()
    assert [e["decision"] for e in entries] == ["accepted", "accepted", "refused"]
    assert entries[1]["reason"].startswith("identical") and entries[2]["tenant"] == "brand_x"
    assert entries[0]["cells_released"] == 2 and entries[0]["cells_suppressed"] == 2
    # the audit survives a restart, and a torn last line from a crash is skipped
    with open(room.audit.path, "a") as fh:
        fh.write('{"ts": 1, "decis')
    reopened = CleanRoom(tmp_path / "acme.duckdb", room.policy)
    assert [e["decision"] for e in reopened.audit.entries()] == ["accepted", "accepted", "refused"]
    # ... and so does the release history: same answer, and differencing against pre-restart releases
    again = reopened.query("brand_x", q)
    assert again.stored_answer and again.cells == a.cells
    assert reopened.audit.entries()[-1]["reason"].startswith("identical")


def test_difference_checks_survive_a_restart(room: CleanRoom, tmp_path: Path) -> None:
    room.query("brand_x", _skus("at_k", "above_k"))
    reopened = CleanRoom(tmp_path / "acme.duckdb", room.policy)
    with pytest.raises(PolicyViolation, match="differencing"):
        reopened.query("brand_x", _skus("at_k", "above_k", "one_shopper"))


def test_difference_checks_compare_against_the_data_an_earlier_release_saw(
    room: CleanRoom, tmp_path: Path
) -> None:
    from tests.cleanroom_data import event, write_rows

    room.query("brand_x", _skus("at_k", "above_k"))  # 2k+1 shoppers
    # a new batch adds one shopper to at_k: the same question now covers 2k+2 shoppers, 1 more than before
    room.load(write_rows(tmp_path / "more.csv", [event("late", "at_k")]))
    with pytest.raises(PolicyViolation, match="differencing"):
        room.query("brand_x", _skus("at_k", "above_k", "missing_sku"))
    # k new shoppers: the difference is k, which is allowed
    room.load(write_rows(tmp_path / "more2.csv", [event(f"n{i}", "at_k") for i in range(K)]))
    assert room.query("brand_x", _skus("at_k", "above_k", "other_missing")).cells


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("revenue", "NaN", "revenue is NaN"),
        ("revenue", "inf", "revenue is NaN, infinite"),
        ("cost", "-1.5", "cost is NaN, infinite or negative"),
        ("quantity", "-3", "quantity is NaN"),
        ("shopper_id", "", "row 2: shopper_id is blank"),
        ("revenue", "lots", "Could not convert|could not convert|Conversion Error"),
    ],
)
def test_loader_refuses_malformed_numbers_and_loads_nothing(
    room: CleanRoom, tmp_path: Path, column: str, value: str, reason: str
) -> None:
    from tests.cleanroom_data import event, write_rows

    before = room.version
    bad = event("x1", "at_k")
    bad[column] = value
    with pytest.raises(CleanRoomError, match=reason):
        room.load(write_rows(tmp_path / "bad.csv", [event("ok", "at_k"), bad]))
    assert room.version == before
    assert room.query("brand_x", Query(metrics=["purchases"])).cells == [
        {"purchases": K + (K - 1) + (K + 1) + 500}
    ]
