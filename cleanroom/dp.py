"""Laplace noise (OpenDP), the delta of noisy cell existence, and the persisted epsilon ledger.

Maths: a vector whose L1 sensitivity is ``d`` (one shopper added or removed changes it by at most ``d`` in
total) released with Laplace noise of scale ``b`` is ``d / b``-differentially private; OpenDP's privacy
map computes that epsilon (and its floating-point-safe sampler draws the noise). Counts: a shopper is in at
most ``L`` cells, so ``d = L``; a metric clamped to ``[0, U]`` per shopper and cell has ``d = L * U``.
Which cells exist is data too: a cell that one shopper alone creates has a (bounded) count of 1 and is
released only when ``1 + Lap(L / eps_count) >= k``; one shopper creates at most ``L`` cells, so a grouped
query is (eps, delta)-DP with ``delta = L * exp(-(k - 1) * eps_count / L) / 2`` (:func:`existence_delta`).

Accounting is in integer micro-epsilon (:data:`MICRO` per 1.0), each charge rounded up, so no charge can
round away; per tenant AND per room (all tenants together), optionally per refresh period.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

from cleanroom.audit import append_durably, read_json_lines
from cleanroom.errors import PolicyViolation

MICRO = 1_000_000
ROOM = "*"  # ledger key of the whole room (all tenants)


class BudgetExhausted(PolicyViolation):
    """The tenant's or the room's epsilon budget cannot pay for this query."""


def to_micro(epsilon: float) -> int:
    """``epsilon`` in whole micro-epsilon, rounded UP (exact: through :class:`fractions.Fraction`)."""
    return math.ceil(Fraction(epsilon) * MICRO)


def existence_delta(k: int, cells_per_shopper: int, eps_count: float) -> float:
    """Delta of releasing a grouped query's cells by the noisy count ``>= k`` (see the module text)."""
    return cells_per_shopper * 0.5 * math.exp(-(k - 1) * eps_count / cells_per_shopper)


def min_count_epsilon(k: int, cells_per_shopper: int, max_delta: float) -> float:
    """The smallest count epsilon whose :func:`existence_delta` is at most ``max_delta``."""
    return cells_per_shopper * math.log(cells_per_shopper * 0.5 / max_delta) / (k - 1)


def laplace(
    values: list[float], sensitivity: float, epsilon: float, seed: int | None = None
) -> tuple[list[float], float]:
    """``values`` plus Laplace noise calibrated to ``epsilon``; returns (noisy values, epsilon spent per
    OpenDP's privacy map). ``seed``: SIMULATED noise from a seeded NumPy generator (synthetic markets
    only, for reproducible comparisons; a real room never passes one)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    scale = sensitivity / epsilon
    meas = dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float), scale=scale
    )
    spent = float(meas.map(float(sensitivity)))
    if seed is not None:
        import numpy as np

        rng = np.random.default_rng(seed)
        return [
            float(v) + float(n) for v, n in zip(values, rng.laplace(0.0, scale, len(values)), strict=True)
        ], spent
    noisy = meas([float(v) for v in values]) if values else []
    return [float(v) for v in noisy], spent


class EpsilonLedger:
    """Micro-epsilon spent per tenant and by the whole room, appended (fsync'ed) to a JSON-lines file
    BEFORE any noisy value exists, and summed again on restart. A crash after the charge loses epsilon,
    never gives it back. With ``refresh_days``, only the current period's charges count."""

    def __init__(self, path: Path, refresh_days: int | None = None) -> None:
        self.path = path
        self.refresh_s = refresh_days * 86400 if refresh_days else None
        self._records: list[tuple[float, str, int, float]] = []  # (ts, tenant, micro, delta)
        self._lock = threading.Lock()
        for rec in read_json_lines(path):
            micro = int(rec["micro"]) if "micro" in rec else to_micro(float(rec["epsilon"]))
            self._records.append(
                (float(rec.get("ts", 0.0)), rec["tenant"], micro, float(rec.get("delta", 0.0)))
            )

    def _period_start(self, now: float) -> float:
        return 0.0 if self.refresh_s is None else now - now % self.refresh_s

    def _totals(self, now: float) -> dict[str, list[float]]:
        start = self._period_start(now)
        totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for ts, tenant, micro, delta in self._records:
            if ts >= start:
                for who in (tenant, ROOM):
                    totals[who][0] += micro
                    totals[who][1] += delta
        return totals

    def spent(self, tenant: str) -> tuple[int, int, float]:
        """In the current period, one pass: (``tenant``'s micro-epsilon, the room's micro-epsilon,
        ``tenant``'s delta)."""
        with self._lock:
            totals = self._totals(time.time())
            return int(totals[tenant][0]), int(totals[ROOM][0]), float(totals[tenant][1])

    def spent_micro(self, tenant: str) -> int:
        """Micro-epsilon ``tenant`` (:data:`ROOM`: everyone) has spent in the current period."""
        with self._lock:
            return int(self._totals(time.time())[tenant][0])

    def spent_delta(self, tenant: str) -> float:
        """Delta ``tenant`` (:data:`ROOM`: everyone) has spent in the current period."""
        with self._lock:
            return float(self._totals(time.time())[tenant][1])

    def period_ends(self) -> float | None:
        """When the current budget period ends (unix seconds); None without refresh."""
        if self.refresh_s is None:
            return None
        return self._period_start(time.time()) + self.refresh_s

    def charge(
        self, tenant: str, micro: int, delta: float, budgets: tuple[int, int], query_key: str
    ) -> dict[str, Any]:
        """Record ``micro`` micro-epsilon (and ``delta``) against ``tenant`` and the room; raises
        :class:`BudgetExhausted` (nothing recorded) when either total would exceed its budget
        (``budgets`` = (tenant, room) in micro-epsilon). Returns the record written."""
        if micro <= 0:
            raise ValueError("a charge is positive")
        with self._lock:
            now = time.time()
            totals = self._totals(now)
            for who, budget, name in ((tenant, budgets[0], "your"), (ROOM, budgets[1], "this room's")):
                if totals[who][0] + micro > budget:
                    left = max(budget - int(totals[who][0]), 0) / MICRO
                    raise BudgetExhausted(
                        f"privacy budget exhausted: this query needs epsilon={micro / MICRO:g}, "
                        f"{left:g} of {name} {budget / MICRO:g} left"
                    )
            rec = {"ts": round(now, 3), "tenant": tenant, "micro": micro, "delta": delta, "key": query_key}
            append_durably(self.path, json.dumps(rec))
            self._records.append((now, tenant, micro, delta))
            return rec
