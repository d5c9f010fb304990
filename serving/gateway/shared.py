"""What one router replica shares with the others through the app's board (serving/cluster_board.py):
tenants' rate limits (leased in batches: :class:`serving.cluster_limits.ClusterLimiter`), its backlog, reported
every second so the engine deployment scales on demand (serving/autoscaling.py), and its demand per tenant, so
each router's share of the engine slots and each tenant's weight follow where the requests are
(:func:`serving.gateway.state.slot_share`).

Contract: :meth:`Shared.start` begins the report loop (once, on the replica's event loop); every board call
has a timeout, and a board that cannot be reached is looked up (or recreated) again on the next call, so the
router serves on with per-replica limits meanwhile. Needs Ray (a Serve replica); the gateway test tier has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from serving.cluster_limits import ClusterLimiter

log = logging.getLogger("ray.serve")
REPORT_EVERY_S = 1.0
LEASE_TIMEOUT_S = 0.25  # longer, and a request falls back to this replica's share of the limit


class Shared:
    """A router replica's link to the app's board. ``waiting()``: its queued requests now; ``routers()``:
    the router replicas running (the fallback share of a limit)."""

    def __init__(
        self,
        app: str,
        me: str,
        waiting: Callable[[], int],
        routers: Callable[[], int],
        demand: Callable[[], dict[str, int]] | None = None,
        on_demand: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._app, self._me = app, me
        self._waiting = waiting
        self._demand, self._on_demand = demand, on_demand
        self._board: Any = None
        self._task: asyncio.Task[None] | None = None
        self.limits = ClusterLimiter(self._lease, routers, lease_timeout_s=LEASE_TIMEOUT_S)
        with contextlib.suppress(Exception):  # created now, so it is up before the first request needs it
            self._handle()

    def start(self) -> None:
        """Start reporting this replica's backlog (idempotent; call from the event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._report_loop())

    async def _lease(self, tenant: str, per_minute: int, want: int) -> tuple[int, float]:
        try:
            granted, wait = await self._handle().lease.remote(tenant, per_minute, want)
        except Exception:
            self._board = None  # look it up again next time (its owner may have died)
            raise
        return int(granted), float(wait)

    async def _report_loop(self) -> None:
        while True:
            try:
                mine = self._demand() if self._demand is not None else None
                view = await asyncio.wait_for(
                    self._handle().report.remote(self._me, self._waiting(), mine), REPORT_EVERY_S
                )
                if self._on_demand is not None and isinstance(view, dict):
                    self._on_demand(view)
            except Exception as e:  # keep serving; the engine's autoscaler sees no backlog from us meanwhile
                log.debug("backlog report failed: %r", e)
                self._board = None
            await asyncio.sleep(REPORT_EVERY_S)

    def _handle(self) -> Any:
        if self._board is None:
            from serving.cluster_board import board_actor

            self._board = board_actor(self._app)
        return self._board
