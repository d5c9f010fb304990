"""What the router replicas of one app share: their backlog and each tenant's rate limit, cluster-wide.

Contract of :class:`Board` (pure Python; one instance lives in a named Ray actor per app, :func:`board_actor`):
- :meth:`Board.report` records a router replica's waiting requests and its demand per tenant (running +
  waiting) and answers with the cluster's demand; :meth:`Board.backlog` sums the reports no older than
  ``stale_s`` (a router that stopped reporting, e.g. died, stops counting);
- :meth:`Board.lease` hands out up to ``want`` tokens of a tenant's cluster-wide token bucket (``per_minute``
  a minute, bursts up to that many) and, when none is left, the seconds until one is: routers take tokens in
  batches and spend them locally (:class:`serving.cluster_limits.ClusterLimiter`), so no request waits for a
  round trip unless its router's batch ran out.
The actor is owned by the router replica that created it (``get_if_exists``): it goes with the app; when its
owner dies the next router to call recreates it, with fresh buckets (at worst one burst too many).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

STALE_S = 5.0


class Board:
    """See the module contract."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stale_s: float = STALE_S) -> None:
        self._clock = clock
        self._stale = stale_s
        self._reports: dict[str, tuple[int, float]] = {}  # router -> (waiting, when)
        self._demand: dict[str, dict[str, int]] = {}  # router -> tenant -> requests running + waiting there
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, last refill)

    def report(self, router: str, waiting: int, demand: dict[str, int] | None = None) -> dict[str, Any]:
        """Router ``router`` has ``waiting`` requests queued now (and, per tenant, ``demand``: its requests
        running or waiting there); returns the cluster's demand as :meth:`demand` does."""
        self._reports[router] = (max(0, int(waiting)), self._clock())
        self._demand[router] = {t: max(0, int(n)) for t, n in (demand or {}).items() if n}
        return self.demand()

    def demand(self) -> dict[str, Any]:
        """``{"routers": router -> its requests running or waiting, "tenants": tenant -> the same, summed}``
        over routers that reported recently: what fair shares across routers are computed from."""
        self.backlog()  # drops stale routers
        routers = {r: sum(self._demand.get(r, {}).values()) for r in self._reports}
        tenants: dict[str, int] = {}
        for r in self._reports:
            for t, n in self._demand.get(r, {}).items():
                tenants[t] = tenants.get(t, 0) + n
        return {"routers": routers, "tenants": tenants}

    def backlog(self) -> int:
        """Requests waiting in all routers that reported recently."""
        now = self._clock()
        for router in [r for r, (_, t) in self._reports.items() if now - t > self._stale]:
            del self._reports[router]
            self._demand.pop(router, None)
        return sum(n for n, _ in self._reports.values())

    def lease(self, tenant: str, per_minute: int, want: int) -> tuple[int, float]:
        """(tokens granted, 0) or, with none left, (0, seconds until one)."""
        rate = per_minute / 60.0
        now = self._clock()
        tokens, last = self._buckets.get(tenant, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - last) * rate)
        granted = min(max(1, want), int(tokens))
        self._buckets[tenant] = (tokens - granted, now)
        if granted:
            return granted, 0.0
        return 0, (1.0 - tokens) / rate

    def state(self) -> dict[str, Any]:
        """What the board holds (tests, ops)."""
        return {"backlog": self.backlog(), "routers": sorted(self._reports), "tenants": sorted(self._buckets)}


def board_actor(app: str) -> Any:
    """The app's board actor (created on first use; Ray's ``get_if_exists`` makes racing creators share one)."""
    import ray

    cls = ray.remote(num_cpus=0)(Board)  # one call at a time: the board's state needs no lock
    return cls.options(name=f"rmn-board-{app}", namespace="rmn", get_if_exists=True).remote()


async def board_backlog(app: str, timeout_s: float = 2.0) -> int:
    """The routers' backlog from the app's board; 0 when there is no board yet or it does not answer in time
    (read by engine replicas: they never create the board, so it stays owned by a router)."""
    import asyncio

    import ray

    try:  # the lookup is a blocking GCS call: off the replica's event loop
        board = await asyncio.to_thread(ray.get_actor, f"rmn-board-{app}", namespace="rmn")
        return int(await asyncio.wait_for(board.backlog.remote(), timeout_s))
    except Exception:
        return 0
