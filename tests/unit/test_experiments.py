"""A/B experiments of stacks (issue #28 item 5): deterministic assignment within the shares, the statistics
against known values, outcomes joined to arms, tenant isolation, durability."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from federation.errors import NotFound
from serving.experiments import ExperimentBoard, ExperimentExists, assign, summary, two_proportion_z, wilson
from serving.records import Records

ARMS = [
    {"name": "control", "model": "base:auto", "share": 0.2},
    {"name": "b", "model": "base:rm", "share": 0.3},
    {"name": "c", "model": "base", "share": 0.5},
]


def test_assignment_is_stable_per_unit_and_within_3_points_of_the_shares() -> None:
    counts = Counter(assign("exp1", f"user-{i}", ARMS)["name"] for i in range(10_000))
    for arm in ARMS:
        assert abs(counts[arm["name"]] / 10_000 - arm["share"]) < 0.03, counts
    assert all(assign("exp1", f"user-{i}", ARMS) == assign("exp1", f"user-{i}", ARMS) for i in range(100))
    halves = Counter(assign("exp2", f"u{i}", ARMS[:2])["name"] for i in range(10_000))  # shares normalised
    assert abs(halves["control"] / 10_000 - 0.4) < 0.03
    # another experiment reshuffles: a unit's arm does not follow it from one experiment to the next
    same = sum(
        assign("exp1", f"u{i}", ARMS)["name"] == assign("exp3", f"u{i}", ARMS)["name"] for i in range(2000)
    )
    assert same < 0.5 * 2000


def test_statistics_match_known_values() -> None:
    z, p = two_proportion_z(200, 1000, 250, 1000)  # 20 % vs 25 % of 1,000 each
    assert z == pytest.approx(2.6774, abs=1e-3) and p == pytest.approx(0.00742, abs=1e-4)
    lo, hi = wilson(10, 100)  # the textbook Wilson interval of 10 / 100
    assert (lo, hi) == (pytest.approx(0.0552, abs=1e-4), pytest.approx(0.1744, abs=1e-4))
    assert two_proportion_z(0, 0, 5, 10) == (0.0, 1.0)


def test_outcomes_join_arms_per_tenant_and_survive_a_new_cluster(tmp_path: Path) -> None:
    records = Records(tmp_path / "registry")
    board = ExperimentBoard(records)
    board.create("brand_x", {"id": "tone", "arms": ARMS[:2]})
    with pytest.raises(ExperimentExists):
        board.create("brand_x", {"id": "tone", "arms": ARMS[:2]})
    board.create("brand_y", {"id": "tone", "arms": ARMS[1:]})  # same id, another tenant: its own
    batch = [(f"r{i}", "brand_x", "tone", "control" if i % 2 else "b") for i in range(200)]
    board.record(batch)
    for i in range(0, 200, 4):  # clicks on every other "b" request, none on control
        board.feedback("brand_x", {"request_id": f"r{i}", "outcome": "click"})
    board.feedback("brand_x", {"request_id": "r1", "outcome": "rating", "value": 4})
    with pytest.raises(NotFound):
        board.feedback("brand_y", {"request_id": "r2", "outcome": "click"})  # not brand_y's request
    with pytest.raises(NotFound):
        board.get("brand_y", "nope")
    result = board.get("brand_x", "tone")
    control, b = result["arms"]
    assert (control["requests"], b["requests"]) == (100, 100)
    assert control["outcomes"]["click"]["count"] == 0 and b["outcomes"]["click"]["count"] == 50
    assert b["outcomes"]["click"]["p_value"] < 1e-6 and control["rating"]["mean"] == 4.0
    assert [a["name"] for a in board.get("brand_y", "tone")["arms"]] == ["b", "c"]
    board.set_state("brand_x", "tone", "stopped")
    again = ExperimentBoard(records)  # a new cluster: experiments and counts read back
    assert again.get("brand_x", "tone") == summary(board._exps[("brand_x", "tone")])
