"""Tenants' rate limits held cluster-wide by one router replica's share of the app's board.

Contract of :class:`ClusterLimiter`: :meth:`acquire` returns 0 when a request of ``tenant`` may proceed,
else the seconds until its cluster-wide bucket has a token. Tokens come from the board
(:class:`serving.cluster_board.Board`) in batches of about one second of the tenant's limit and are spent
locally, so a request waits for a round trip only when its router's batch ran out (for limits under 60 a
minute, a batch is one token: exact, one round trip per request). Unused tokens expire after a minute.
When the board cannot be reached (``lease_timeout_s``), the replica falls back to a local bucket of the limit
divided by the router replicas, and says so in its log once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from federation.ratelimit import RateLimiter

log = logging.getLogger("ray.serve")

Lease = Callable[[str, int, int], Awaitable[tuple[int, float]]]
TOKEN_TTL_S = 60.0


class ClusterLimiter:
    """See the module contract. ``lease(tenant, per_minute, want)`` asks the board; ``routers()`` is the number
    of router replicas (for the fallback share)."""

    def __init__(
        self,
        lease: Lease,
        routers: Callable[[], int],
        lease_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease = lease
        self._routers = routers
        self._timeout = lease_timeout_s
        self._clock = clock
        self._local: dict[str, tuple[int, float]] = {}  # tenant -> (tokens, when leased)
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._empty_until: dict[str, float] = {}
        self._fallback = RateLimiter(clock)
        self.degraded = False

    async def acquire(self, tenant: str, per_minute: int) -> float:
        """0.0 when allowed, else the seconds until the tenant's cluster-wide bucket has a token."""
        while not self._take(tenant):
            empty_for = self._empty_until.get(tenant, 0.0) - self._clock()
            if empty_for > 0:  # the board said so a moment ago: no round trip to hear it again
                return empty_for
            pending = self._pending.get(tenant)
            if pending is not None:  # another request of this tenant is leasing: share its batch
                await asyncio.wait({pending})
                continue
            try:
                granted, wait = await self._lease_once(tenant, per_minute)
            except Exception as e:  # the board is unreachable: this replica's share of the limit, locally
                if not self.degraded:
                    log.warning("cluster-wide rate limits unavailable (%r): per-replica limits meanwhile", e)
                self.degraded = True
                share = max(1, per_minute // max(1, self._routers()))
                return self._fallback.acquire(tenant, share)
            self.degraded = False
            if not granted:
                self._empty_until[tenant] = self._clock() + wait
                return wait
            self._local[tenant] = (granted, self._clock())
        return 0.0

    def _take(self, tenant: str) -> bool:
        tokens, when = self._local.get(tenant, (0, 0.0))
        if tokens >= 1 and self._clock() - when < TOKEN_TTL_S:
            self._local[tenant] = (tokens - 1, when)
            return True
        self._local.pop(tenant, None)
        return False

    async def _lease_once(self, tenant: str, per_minute: int) -> tuple[int, float]:
        """One round trip for about a second of the tenant's limit; others of the tenant wait for it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[tenant] = future
        try:
            return await asyncio.wait_for(
                self._lease(tenant, per_minute, max(1, math.ceil(per_minute / 60))), self._timeout
            )
        finally:
            del self._pending[tenant]
            future.set_result(None)
