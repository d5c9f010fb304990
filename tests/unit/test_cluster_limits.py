"""The app's board (backlog, cluster-wide token buckets), a router's leased limits, the engine's policy."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from serving.autoscaling import BACKLOG_METRIC, engine_policy
from serving.cluster_board import Board
from serving.cluster_limits import ClusterLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_backlog_sums_fresh_reports_only() -> None:
    clock = Clock()
    board = Board(clock, stale_s=5)
    board.report("r1", 7)
    board.report("r2", 3)
    assert board.backlog() == 10
    clock.t += 3
    board.report("r2", 1)
    assert board.backlog() == 8
    clock.t += 3  # r1 stopped reporting (died, or its queue drained and it went idle)
    assert board.backlog() == 1 and board.state()["routers"] == ["r2"]


def test_one_bucket_per_tenant_for_the_whole_cluster() -> None:
    clock = Clock()
    board = Board(clock)
    assert board.lease("t", 60, 10) == (10, 0.0)  # a burst of up to a minute's worth
    assert board.lease("t", 60, 100) == (50, 0.0)
    granted, wait = board.lease("t", 60, 1)
    assert granted == 0 and wait == pytest.approx(1.0)  # 60 a minute: one a second
    clock.t += 2.5
    assert board.lease("t", 60, 5) == (2, 0.0)
    assert board.lease("other", 60, 1) == (1, 0.0)  # tenants do not share


def routers_sharing(board: Board, n: int, clock: Clock) -> list[ClusterLimiter]:
    async def lease(tenant: str, per_minute: int, want: int) -> tuple[int, float]:
        await asyncio.sleep(0)  # a round trip
        return board.lease(tenant, per_minute, want)

    return [ClusterLimiter(lease, routers=lambda: n, clock=clock) for _ in range(n)]


def test_routers_together_admit_one_limit_not_one_each() -> None:
    async def main() -> None:
        clock = Clock()
        board = Board(clock)
        routers = routers_sharing(board, 3, clock)
        allowed = 0
        for i in range(300):  # 300 requests spread over 3 routers within one instant: limit 120/min
            allowed += (await routers[i % 3].acquire("t", 120)) == 0
        assert 118 <= allowed <= 120  # a batch of 2 tokens may sit unspent in a router
        clock.t += 30  # half a minute refills 60
        allowed = sum([(await routers[i % 3].acquire("t", 120)) == 0 for i in range(300)])
        assert 58 <= allowed <= 62

    asyncio.run(main())


def test_concurrent_requests_share_one_round_trip() -> None:
    calls: list[int] = []

    async def lease(tenant: str, per_minute: int, want: int) -> tuple[int, float]:
        calls.append(want)
        await asyncio.sleep(0.01)
        return want, 0.0

    async def main() -> None:
        limiter = ClusterLimiter(lease, routers=lambda: 1)
        waits = await asyncio.gather(*[limiter.acquire("t", 600) for _ in range(10)])
        assert waits == [0.0] * 10 and calls == [10]  # one batch of a second's worth (600/min -> 10)

    asyncio.run(main())


def test_an_unreachable_board_falls_back_to_this_replicas_share() -> None:
    async def lease(tenant: str, per_minute: int, want: int) -> tuple[int, float]:
        raise ConnectionError("board gone")

    async def main() -> None:
        limiter = ClusterLimiter(lease, routers=lambda: 2)
        allowed = sum([(await limiter.acquire("t", 10)) == 0 for _ in range(20)])
        assert allowed == 5 and limiter.degraded  # 10 a minute over 2 routers

    asyncio.run(main())


def context(replicas: int, ongoing: float, backlogs: list[float], target: float = 2) -> Any:
    reported = {f"replica-{i}": b for i, b in enumerate(backlogs)}
    return SimpleNamespace(
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        total_num_requests=ongoing,
        aggregated_metrics={BACKLOG_METRIC: reported},
        config=SimpleNamespace(get_target_ongoing_requests=lambda: target),
    )


def test_the_engine_scales_on_ongoing_plus_the_routers_backlog() -> None:
    # 1 replica full at max_ongoing_requests 2 (= target 2): the default policy would see 2/2 and stay at 1
    desired, state = engine_policy(context(1, ongoing=2, backlogs=[10]))
    assert desired == 6 and state == {"backlog": 10}
    # every replica reports the same cluster-wide figure: counted once
    assert engine_policy(context(2, ongoing=4, backlogs=[8, 8]))[0] == 6
    assert engine_policy(context(3, ongoing=1, backlogs=[0, 0, 0]))[0] == 0.5  # idle: scale down
    assert engine_policy(context(0, ongoing=0, backlogs=[]))[0] == 0
