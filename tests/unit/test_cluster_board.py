"""The board's demand view and what routers make of it: slot shares by demand, tenant weights across routers
(issue #31 item 1, fair-share accounting shared by the router replicas)."""

from __future__ import annotations

from serving.cluster_board import Board


def test_the_board_sums_each_routers_demand_and_each_tenants() -> None:
    now = [0.0]
    board = Board(clock=lambda: now[0], stale_s=5)
    board.report("r1", 3, {"heavy": 7, "light": 1})
    view = board.report("r2", 0, {"heavy": 2})
    assert view == {"routers": {"r1": 8, "r2": 2}, "tenants": {"heavy": 9, "light": 1}}
    now[0] = 6  # r1 stopped reporting (died): its demand no longer counts
    assert board.report("r2", 0, {"heavy": 2}) == {"routers": {"r2": 2}, "tenants": {"heavy": 2}}


def test_a_routers_slots_follow_its_share_of_the_demand() -> None:
    from serving.gateway.state import slot_share

    assert slot_share(6, 2, 0, 0) == 3  # nobody asks: an equal share
    assert slot_share(6, 2, 9, 10) == 5 and slot_share(6, 2, 1, 10) == 1  # the busy router gets the slots
    assert slot_share(6, 2, 0, 10) == 1  # an idle router keeps one: a request arriving there starts at once
    assert slot_share(6, 2, 10, 10) == 6


def test_a_tenant_busy_on_two_routers_weighs_as_one_tenant() -> None:
    from serving.admission import FairScheduler

    s = FairScheduler(slots=1, max_wait_s=10, weights={"heavy": 1.0})
    s._tenant("heavy")
    s._tenant("light")
    s.scale_weights({"heavy": 0.5, "light": 1.0})  # half of heavy's cluster-wide demand is on this router
    assert s._tenants["heavy"].weight == 0.5 and s._tenants["light"].weight == 1.0
    s.scale_weights({"heavy": 0.0001})
    assert s._tenants["heavy"].weight == 0.05  # floored: never starved
