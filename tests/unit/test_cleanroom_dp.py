"""Differential privacy in the clean room: OpenDP noise, k on the noisy count, bounded contributions,
the persisted epsilon ledger, stored answers (no averaging the noise away), malformed epsilons."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cleanroom import BudgetExhausted, CleanRoom, DPPolicy, PolicyViolation, Query
from cleanroom.query import Filter
from tests.cleanroom_data import dp_policy, event, exact_policy, write_events, write_rows

K = 5
TRUE_PURCHASES = K + (K - 1) + (K + 1) + 500  # the whale bought 500 times


def dp_room(tmp_path: Path, budget: float = 10.0, rows: Path | None = None, **dp_fields: object) -> CleanRoom:
    policy = dp_policy(
        k=K,
        dp=DPPolicy.model_validate(
            {
                "epsilon_per_query": 0.5,
                "min_epsilon_per_query": 0.25,
                "max_epsilon_per_query": min(9.0, budget),
                "epsilon_budget": budget,
                "room_epsilon_budget": max(budget, 30.0),
                "max_delta_per_query": 1e-3,
                "max_cells_per_shopper": 4,
                **dp_fields,
            }
        ),
    )
    room = CleanRoom(tmp_path / "acme.duckdb", policy)
    if rows is None:
        rows = write_events(tmp_path / "events.csv", K)
    room.load(rows)
    return room


def test_answers_are_noisy_charged_and_the_whale_is_clamped(tmp_path: Path) -> None:
    room = dp_room(tmp_path)
    res = room.query("brand_x", Query(metrics=["purchases"], epsilon=5.0))
    assert res.noisy and res.epsilon_spent == pytest.approx(5.0)
    # purchases are clamped to 5 per shopper and cell: the whale adds 5, not 500; noise scale 4*5/2.5 = 8
    (cell,) = res.cells
    assert abs(cell["purchases"] - (3 * K + 5)) < 80 and cell["purchases"] < TRUE_PURCHASES / 2
    assert room.budget("brand_x")["epsilon_spent"] == pytest.approx(5.0)
    assert room.budget("brand_y")["epsilon_spent"] == 0.0
    assert room.audit.entries()[-1]["epsilon_spent"] == pytest.approx(5.0)


def test_repeating_a_query_returns_the_stored_noise_and_spends_nothing(tmp_path: Path) -> None:
    room = dp_room(tmp_path)
    q = Query(metrics=["revenue"], filters=[Filter(column="sku", op="in", value=["at_k", "above_k"])])
    first = room.query("brand_x", q)
    assert first.epsilon_spent == pytest.approx(0.5)  # the policy's default per-query epsilon
    again = [room.query("brand_x", q) for _ in range(5)]
    explicit = room.query("brand_x", q.model_copy(update={"epsilon": 0.5}))  # same query, default spelled out
    assert all(
        r.cells == first.cells and r.stored_answer and r.epsilon_spent == 0 for r in [*again, explicit]
    )
    assert room.budget("brand_x")["epsilon_spent"] == pytest.approx(0.5)


def test_the_budget_runs_out_and_the_ledger_survives_a_restart(tmp_path: Path) -> None:
    room = dp_room(tmp_path, budget=2.0)
    for eps in (0.5, 1.0):
        room.query("brand_x", Query(metrics=["purchases"], epsilon=eps))
    with pytest.raises(BudgetExhausted, match=r"0\.5 of your 2 left"):
        room.query("brand_x", Query(metrics=["revenue"], epsilon=1.0))
    assert room.audit.entries()[-1]["decision"] == "refused"
    room.close()
    reopened = CleanRoom(tmp_path / "acme.duckdb", room.policy)
    assert reopened.budget("brand_x")["epsilon_remaining"] == pytest.approx(0.5)
    with pytest.raises(BudgetExhausted):
        reopened.query("brand_x", Query(metrics=["clicks"], epsilon=0.6))
    assert reopened.query("brand_x", Query(metrics=["clicks"], epsilon=0.5)).noisy
    with pytest.raises(BudgetExhausted):
        reopened.query("brand_x", Query(metrics=["units"], epsilon=0.25))


def test_k_applies_to_the_noisy_count(tmp_path: Path) -> None:
    """A cell with exactly k shoppers is released about half the time under noise (always, if k were
    applied to the true count); a cell with one shopper practically never."""
    rows = [event(f"s{j}_{i}", f"sku{j}") for j in range(40) for i in range(K)]  # 40 cells at exactly k
    room = dp_room(
        tmp_path, budget=1000.0, rows=write_rows(tmp_path / "k.csv", rows), max_cells_per_shopper=1
    )
    released = 0
    for rep in range(10):  # a different epsilon is a different query: fresh noise each time
        res = room.query("brand_x", Query(dimensions=["sku"], metrics=["purchases"], epsilon=4.0 + rep / 100))
        released += len(res.cells)
        assert res.suppressed_cells is None and len(res.cells) <= 40
    assert 0.2 < released / 400 < 0.8


def test_each_shopper_contributes_to_at_most_L_cells(tmp_path: Path) -> None:
    # one shopper bought in 40 cells: with L = 4 only 4 of those cells may count them
    rows = [event("busy", f"sku{j}") for j in range(40)]
    room = dp_room(tmp_path, rows=write_rows(tmp_path / "busy.csv", rows))
    from cleanroom.query import compile_query

    c = compile_query(Query(dimensions=["sku"], metrics=["purchases"]), room.policy, room.version)
    counted = room.store.con.execute(c.cells_sql, c.params).fetchall()
    assert len(counted) == room.policy.dp.max_cells_per_shopper  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"metrics": ["purchases"], "epsilon": "NaN"}, ValidationError),
        ({"metrics": ["purchases"], "epsilon": "Infinity"}, ValidationError),
        ({"metrics": ["purchases"], "epsilon": -1}, ValidationError),
        ({"metrics": ["purchases"], "epsilon": 0}, ValidationError),
        ({"metrics": ["purchases"], "epsilon": 1e300}, PolicyViolation),
        ({"metrics": ["purchases"], "epsilon": 9.01}, PolicyViolation),
        ({"metrics": ["purchases"], "epsilon": 1e-9}, PolicyViolation),
        ({"metrics": ["purchases"], "epsilon": 1e-300}, PolicyViolation),
        ({"metrics": ["purchases"], "epsilon": 5e-324}, PolicyViolation),
        ({"metrics": ["purchases"], "epsilon": 1e-308}, PolicyViolation),
    ],
)
def test_malformed_epsilons_are_refused_and_cost_nothing(tmp_path: Path, query: dict, error: type) -> None:
    room = dp_room(tmp_path)
    with pytest.raises(error):
        room.query("brand_x", Query.model_validate(query))
    assert room.budget("brand_x")["epsilon_spent"] == 0.0


def test_epsilon_without_dp_and_metrics_without_bounds_are_refused(tmp_path: Path) -> None:
    plain = CleanRoom(tmp_path / "plain.duckdb", exact_policy(k=K))
    with pytest.raises(PolicyViolation, match="no differential privacy"):
        plain.query("brand_x", Query(metrics=["purchases"], epsilon=1.0))
    policy = dp_policy(k=K, dp=DPPolicy(metric_bounds={"purchases": 5.0}))
    room = CleanRoom(tmp_path / "dp.duckdb", policy)
    with pytest.raises(PolicyViolation, match="no declared bound"):
        room.query("brand_x", Query(metrics=["revenue"], filters=[Filter(column="sku", op="eq", value="x")]))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"epsilon_per_query": float("nan")}, "finite number"),
        ({"epsilon_per_query": 3.0, "max_epsilon_per_query": 2.0}, "epsilon_per_query <= max_epsilon"),
        ({"epsilon_per_query": 0.1}, "min_epsilon_per_query <= epsilon_per_query"),
        ({"min_epsilon_per_query": 0.0}, "greater than or equal to 0.001"),
        ({"epsilon_budget": 40.0}, "above room_epsilon_budget"),
        ({"epsilon_budget": 1.0}, "above epsilon_budget"),
        ({"metric_bounds": {"revenue": float("inf")}}, "positive and finite"),
        ({"metric_bounds": {"revenue": -1.0}}, "positive and finite"),
        ({"metric_bounds": {"max_revenue": 1.0}}, "unknown metrics"),
    ],
)
def test_dp_policy_validation(fields: dict, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        DPPolicy(**fields)
