"""Admission control and fair queueing in front of the engine deployment (one per router replica).

Contract of :class:`FairScheduler`:
- at most ``slots`` requests are dispatched to the engines at once (the engines' concurrency, so Serve's own
  queue stays empty and waiting happens here, where it can be fair and measured);
- a request that finds no free slot waits in its tenant's queue; queues are served by start-time fair queueing
  (a tenant of weight w gets w shares of the slots while it has waiters), so a tenant flooding the router cannot
  starve a light one: the light tenant's request is served after at most one turn of each active tenant;
- before queueing, the wait is ESTIMATED by list scheduling: each slot frees when its running request's
  remaining service ends (its predicted service, :class:`serving.service_time.ServiceTime`: a measured
  per-request overhead plus a time per unit of cost, fitted over completed requests; less what it has run;
  never "free now" for a request already past its prediction), and the requests ahead of it in fair order take
  the earliest free slots in turn. Predictions are stretched by the larger of the overrun seen lately (how much
  longer finished requests ran than predicted) and the overrun of the requests running NOW (the median of
  their elapsed / predicted): a machine that slows down is seen before its slow requests finish. When the wait
  exceeds ``max_wait_s``, or the predicted finish passes the request's deadline less a safety margin (25 %,
  widened after each admitted request that missed its deadline, narrowing back as requests finish in time), the
  request is refused at once (:class:`Shed`, HTTP 503 + Retry-After); a queued request still waiting after
  1.5x ``max_wait_s`` or when it could no longer finish in time, or whose turn comes
  when (predicted with the slowdown seen by then) it would finish past its deadline less half the margin, is
  refused then (503, so within 1.5x ``max_wait_s``), not left to time out (504); a request
  that finds a free slot is dispatched (it may end early: ``max_tokens`` is a bound). ``max_queue`` bounds the
  waiters;
- a slot is kept for the other tenants (``reserve``): while another tenant has sent a request here in the last
  ``reserve_window_s``, no tenant holds more than ``slots - reserve`` of the slots (the reserve is at most a
  quarter of them: none below 4 slots), so that other tenant's next request starts at once instead of waiting
  for a running request of a flood to end; a lone tenant gets every slot, and tenants that all have waiters
  still fill every slot between them;
- nothing is lost: a waiter is either dispatched, shed, or removed when its caller gives up (cancellation).
Pure asyncio; no Ray.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NoReturn

from serving.service_time import ServiceTime

BASE_MARGIN = 0.25  # share of a request's deadline admission keeps free
MAX_MARGIN = 0.6
MAX_RATIO = 4.0  # one request's actual / predicted service counts at most this much (outliers)
LATE_FACTOR = 1.5  # a queued request still waiting after this x max_wait_s is refused
OVERDUE_FLOOR = 0.2  # a running request past its prediction still holds its slot this share of its service
MAX_LIVE = 2.0  # requests stuck on a lost replica are not a slower machine: the live stretch stops at 2x


class Shed(Exception):
    """Refused before queueing: ``reason`` (``queue_wait`` or ``queue_full``), ``retry_after_s``."""

    def __init__(self, message: str, reason: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass
class _Waiter:
    tag: float
    cost: float
    future: asyncio.Future[None]


@dataclass
class _Tenant:
    weight: float
    queue: deque[_Waiter] = field(default_factory=deque)
    last_tag: float = 0.0
    inflight: int = 0
    last_seen: float = -math.inf  # when it last asked for a slot (monotonic)


@dataclass(eq=False)
class Lease:
    """A dispatched request: give it back with :meth:`FairScheduler.release` (once; again is a no-op)."""

    tenant: str
    started: float
    waited_s: float
    cost: float = 1.0
    predicted_s: float = 0.0  # its service time at dispatch, before any overrun stretch
    censored: bool = False  # it hit its deadline: its time is a lower bound, not a measurement
    # one-off time inside it that is no service: its adapter composed and loaded, an attempt on a lost replica
    excluded_s: float = 0.0


class FairScheduler:
    """See the module contract. ``weights``: tenant -> weight (default 1)."""

    def __init__(
        self,
        slots: int,
        max_wait_s: float,
        initial_service_s: float = 1.0,
        max_queue: int = 1024,
        weights: dict[str, float] | None = None,
        lease_ttl_s: float = 600.0,
        reserve: int = 0,
        reserve_window_s: float = 30.0,
    ) -> None:
        self.slots = max(1, slots)
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.model = ServiceTime(initial_service_s)  # seconds per request: overhead + cost x per unit
        self._weights = dict(weights or {})
        self._tenants: dict[str, _Tenant] = {}
        self._inflight = 0
        self._leases: dict[int, Lease] = {}
        self.lease_ttl_s = (
            lease_ttl_s  # a lease older than this was leaked (its request is past its deadline)
        )
        self._vtime = 0.0  # virtual time: the tag of the last request dispatched
        self.overrun = 1.0  # recent actual / predicted service time (>= 1): stretches every estimate
        self.margin = BASE_MARGIN  # share of a deadline kept free: widened by misses, narrowed by successes
        self.shed_counts: dict[str, int] = {"queue_wait": 0, "queue_full": 0, "deadline": 0}
        self.reserve = reserve
        self.reserve_window_s = reserve_window_s

    # ---- what the router reads ----------------------------------------------------------------
    @property
    def inflight(self) -> int:
        """Requests dispatched and not yet released."""
        return self._inflight

    @property
    def waiting(self) -> int:
        """Requests queued in all."""
        return sum(len(t.queue) for t in self._tenants.values())

    def demand(self) -> dict[str, int]:
        """Tenant -> its requests running or waiting here."""
        return {t: s.inflight + len(s.queue) for t, s in self._tenants.items() if s.inflight or s.queue}

    def scale_weights(self, scale: dict[str, float]) -> None:
        """Weigh each tenant by its configured weight x ``scale`` (its share of its cluster-wide demand that
        is here, floored at 5 %): a tenant active on several routers gets, in all, one tenant's share."""
        for name, state in self._tenants.items():
            base = max(self._weights.get(name, 1.0), 1e-3)
            state.weight = base * min(1.0, max(0.05, scale.get(name, 1.0)))

    def set_slots(self, slots: int) -> None:
        """Resize (the engine deployment scaled); waiters are dispatched into new slots at once."""
        self.slots = max(1, slots)
        self._dispatch()

    @property
    def unit_s(self) -> float:
        """Seconds per unit of cost, as fitted now (without the overhead)."""
        return self.model.unit_s

    def service_s(self, cost: float, now: float | None = None) -> float:
        """Predicted seconds of service for a request of ``cost``, stretched by the overrun seen lately and by
        the overrun of the requests running now."""
        return self.model.predict(cost) * max(self.overrun, self.live_overrun(now))

    def live_overrun(self, now: float | None = None) -> float:
        """How much longer than predicted the requests running now have already run (>= 1): the median of
        elapsed / predicted over the running requests (one straggler does not stretch everything), at most
        ``MAX_LIVE``."""
        now = time.monotonic() if now is None else now
        ratios = sorted(
            (now - lease.started) / lease.predicted_s
            for lease in self._leases.values()
            if lease.predicted_s > 0
        )
        return min(MAX_LIVE, max(1.0, ratios[len(ratios) // 2])) if ratios else 1.0

    def estimate_wait(self, tenant: str) -> float:
        """Seconds a new request of ``tenant`` would wait before dispatch (0 with a free slot it may take), by
        list scheduling over the slots (see the module contract); a tenant at its cap (the reserve) waits at
        least until enough of its own running requests end."""
        now = time.monotonic()
        state = self._tenants.get(tenant)
        mine = state.inflight if state else 0
        cap = self.cap(tenant, now)
        if self._inflight < self.slots and mine < cap and not (state and state.queue):
            return 0.0
        wait = self._list_schedule(
            list(self._leases.values()), self._inflight, self.slots, self._ahead_costs(tenant), now
        )
        if mine >= cap:  # its own running requests must end first
            own = [lease for lease in self._leases.values() if lease.tenant == tenant]
            queued = [x.cost for x in state.queue] if state else []
            wait = max(wait, self._list_schedule(own, mine, cap, queued, now))
        return wait

    def _list_schedule(
        self, leases: list[Lease], running: int, slots: int, ahead: list[float], now: float
    ) -> float:
        """When the first of ``slots`` slots is free for a new request, with ``running`` requests on them
        (``leases`` those tracked) and ``ahead`` (costs) served first."""
        remaining = []
        for lease in leases:
            service = self.service_s(lease.cost, now)
            remaining.append(max(OVERDUE_FLOOR * service, service - (now - lease.started)))
        untracked = max(0, running - len(remaining))  # dispatched, lease not yet taken: just started
        remaining = sorted(remaining + [self.service_s(self._mean_cost(), now)] * untracked)
        excess = max(0, len(remaining) - slots)  # more running than slots (shrunk): those free nothing
        free = remaining[excess:] + [0.0] * max(0, slots - len(remaining))
        heapq.heapify(free)
        for cost in ahead:
            heapq.heappush(free, heapq.heappop(free) + self.service_s(cost, now))
        return free[0]

    def cap(self, tenant: str, now: float | None = None, recent: set[str] | None = None) -> int:
        """Most slots ``tenant`` may hold now: all of them, less ``reserve`` (at most a quarter of them) while
        another tenant has asked here within ``reserve_window_s``. ``recent``: those tenants, if known."""
        reserve = min(self.reserve, self.slots // 4)  # never more than a quarter of the slots
        if reserve <= 0:
            return self.slots
        recent = self._recent(now) if recent is None else recent
        return self.slots - reserve if recent - {tenant} else self.slots

    def _recent(self, now: float | None = None) -> set[str]:
        """Tenants that asked for a slot here within ``reserve_window_s``."""
        since = (time.monotonic() if now is None else now) - self.reserve_window_s
        return {name for name, s in self._tenants.items() if s.last_seen >= since}

    def record_miss(self, lease: Lease | None = None) -> None:
        """An admitted request missed its deadline: keep a wider share of every deadline free from now on;
        its ``lease`` (if it was dispatched) then counts as a lower bound of its service, not a measurement."""
        self.margin = min(MAX_MARGIN, self.margin + 0.1)
        if lease is not None:
            lease.censored = True

    # ---- the request path ----------------------------------------------------------------------
    async def acquire(self, tenant: str, cost: float = 1.0, time_left_s: float | None = None) -> Lease:
        """Dispatch now, or queue fairly, or raise :class:`Shed` (see the module contract). With
        ``time_left_s`` (the request's deadline), a request that would wait and then run past the kept share of
        it is refused (reason ``deadline``), at once or as soon as a late slot makes it so: queued work finishes
        in time."""
        t0 = time.monotonic()
        self._reap(t0)
        state = self._tenant(tenant)
        state.last_seen = t0
        self._dispatch()  # the caps may have grown since (a reserve lapsed)
        if self._inflight < self.slots and state.inflight < self.cap(tenant, t0) and not state.queue:
            return self._start(state, tenant, t0, cost)  # a free slot costs nothing: try (early EOS)
        self._admit_to_queue(tenant, cost, time_left_s)
        tag = max(self._vtime, state.last_tag) + 1.0 / state.weight
        state.last_tag = tag
        waiter = _Waiter(tag, cost, asyncio.get_running_loop().create_future())
        state.queue.append(waiter)
        # refused if not started by its latest start that still finishes within the kept share of the deadline,
        # or after waiting 1.5x max_wait_s (admission's bound on a wait, missed: the engines are slower than
        # measured, or lost)
        start_by = None
        if time_left_s is not None:
            start_by = min(
                time_left_s - self.service_s(cost) / (1 - self.margin), LATE_FACTOR * self.max_wait_s
            )
        try:
            if start_by is None:
                await waiter.future
            elif not (await asyncio.wait({waiter.future}, timeout=max(0.0, start_by)))[0]:
                # the slots freed later than estimated: refuse now rather than answer 504 later
                state.queue.remove(waiter)
                waiter.future.cancel()
                self._shed(
                    "deadline",
                    "server overloaded: still queued when it could no longer finish before its deadline; retry later",
                    self.service_s(cost),
                )
        except BaseException:
            if waiter in state.queue:  # gave up while queued: nothing to release
                state.queue.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                self._release_slot(state)  # dispatched just as it was cancelled: hand the slot on
            raise
        now = time.monotonic()
        if time_left_s is not None:  # its turn came: can it still finish in time, as predicted NOW?
            finish = now - t0 + self.service_s(cost, now)
            if finish > time_left_s * (1 - self.margin / 2):
                self._release_slot(state)  # hand the slot to the next waiter
                self._shed(
                    "deadline",
                    "server overloaded: by its turn it could no longer finish before its deadline; retry later",
                    finish - time_left_s * (1 - self.margin / 2),
                )
        return self._track(Lease(tenant, now, now - t0, cost, self.model.predict(cost)))

    def release(self, lease: Lease) -> None:
        """The request ended (any outcome): update the service time (less ``lease.excluded_s``: a cold adapter
        load or an attempt on a lost replica is not the service rate), the overrun and the margin, and dispatch
        the next waiter."""
        if self._leases.pop(id(lease), None) is None:
            return
        seconds = max(0.0, time.monotonic() - lease.started - lease.excluded_s)
        if lease.predicted_s > 0:  # actual vs the prediction from the service time alone
            ratio = min(seconds / lease.predicted_s, 2.0 if lease.censored else MAX_RATIO)
            self.overrun = max(1.0, 0.8 * self.overrun + 0.2 * ratio)
        if not lease.censored:
            self.model.observe(lease.cost, seconds)
        self.margin = max(BASE_MARGIN, self.margin * 0.98)
        self._release_slot(self._tenant(lease.tenant))

    def _admit_to_queue(self, tenant: str, cost: float, time_left_s: float | None) -> float:
        """The estimated wait of a new request of ``tenant``; :class:`Shed` unless it may queue (bounded queue,
        predicted finish inside the kept share of its deadline, wait under ``max_wait_s``)."""
        wait = self.estimate_wait(tenant)
        if self.waiting >= self.max_queue:
            self._shed("queue_full", "server overloaded: the queue is full, retry later", wait)
        finish = wait + self.service_s(cost)
        keep = 1 - self.margin
        if time_left_s is not None and finish > keep * time_left_s:
            self._shed(
                "deadline",
                f"server overloaded: queued, it would finish in about {finish:.1f}s, past its deadline; retry later",
                finish - keep * time_left_s,
            )
        if wait > self.max_wait_s:
            self._shed(
                "queue_wait",
                f"server overloaded: the estimated wait ({wait:.1f}s) exceeds {self.max_wait_s:.1f}s, retry later",
                wait - self.max_wait_s,
            )
        return wait

    def _shed(self, reason: str, message: str, retry_after_s: float) -> NoReturn:
        self.shed_counts[reason] += 1
        raise Shed(message, reason, _retry(retry_after_s))

    # ---- internals -----------------------------------------------------------------------------
    def _tenant(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(max(self._weights.get(tenant, 1.0), 1e-3))
        return state

    def _start(self, state: _Tenant, tenant: str, t0: float, cost: float) -> Lease:
        self._inflight += 1
        state.inflight += 1
        now = time.monotonic()
        return self._track(Lease(tenant, now, now - t0, cost, self.model.predict(cost)))

    def _track(self, lease: Lease) -> Lease:
        self._leases[id(lease)] = lease
        return lease

    def _reap(self, now: float) -> None:
        """Reclaim leaked leases (a response never iterated, so never released)."""
        for key, lease in list(self._leases.items()):
            if now - lease.started > self.lease_ttl_s:
                del self._leases[key]
                self._release_slot(self._tenant(lease.tenant))

    def _release_slot(self, state: _Tenant) -> None:
        self._inflight -= 1
        state.inflight -= 1
        self._dispatch()
        self._forget_idle()

    def _dispatch(self) -> None:
        recent = self._recent() if self.reserve > 0 else set()
        while self._inflight < self.slots:
            best: _Tenant | None = None
            for name, state in self._tenants.items():
                if (
                    state.queue
                    and (best is None or state.queue[0].tag < best.queue[0].tag)
                    and state.inflight < self.cap(name, recent=recent)
                ):
                    best = state
            if best is None:
                return
            waiter = best.queue.popleft()
            if waiter.future.done():  # cancelled meanwhile
                continue
            self._vtime = waiter.tag
            self._inflight += 1
            best.inflight += 1
            waiter.future.set_result(None)

    def _ahead_costs(self, tenant: str) -> list[float]:
        """Costs of the requests that fair order puts before a new one of ``tenant``."""
        me = self._tenants.get(tenant)
        mine = len(me.queue) if me else 0
        w = me.weight if me else max(self._weights.get(tenant, 1.0), 1e-3)
        ahead = [x.cost for x in me.queue] if me else []
        for name, state in self._tenants.items():
            if name != tenant and state.queue:
                n = math.ceil((mine + 1) * state.weight / w)
                ahead += [x.cost for x in list(state.queue)[:n]]
        return ahead

    def _mean_cost(self) -> float:
        leases = list(self._leases.values())
        return sum(lease.cost for lease in leases) / len(leases) if leases else 1.0

    def _forget_idle(self) -> None:
        """Drop idle tenants' state (bounded memory for any number of tenants)."""
        if len(self._tenants) > 64:
            for name in [n for n, s in self._tenants.items() if not s.queue and not s.inflight]:
                del self._tenants[name]


def _retry(seconds: float) -> int:
    return max(1, math.ceil(seconds))
