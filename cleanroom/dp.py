"""Laplace noise through OpenDP, and the persisted per-tenant epsilon ledger.

Maths: a vector whose L1 sensitivity is ``d`` (one shopper added or removed changes it by at most ``d`` in
total) released with Laplace noise of scale ``b`` is ``d / b``-differentially private; OpenDP's privacy
map computes that epsilon (and its floating-point-safe sampler draws the noise). Counts: a shopper is in at
most ``L`` cells, so ``d = L``; a metric clamped to ``[0, U]`` per shopper and cell has ``d = L * U``.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from pathlib import Path

from cleanroom.audit import append_durably, read_json_lines
from cleanroom.errors import PolicyViolation


class BudgetExhausted(PolicyViolation):
    """The tenant's epsilon budget cannot pay for this query."""


def laplace(values: list[float], sensitivity: float, epsilon: float) -> tuple[list[float], float]:
    """``values`` plus Laplace noise calibrated to ``epsilon``; returns (noisy values, epsilon spent per
    OpenDP's privacy map)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    meas = dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)),
        dp.l1_distance(T=float),
        scale=sensitivity / epsilon,
    )
    spent = float(meas.map(float(sensitivity)))
    noisy = meas([float(v) for v in values]) if values else []
    return [float(v) for v in noisy], spent


class EpsilonLedger:
    """Epsilon spent per tenant, appended (fsync'ed) to a JSON-lines file before any noisy answer leaves,
    and summed again on restart. A crash after the charge loses epsilon, never gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._spent: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        for rec in read_json_lines(path):
            self._spent[rec["tenant"]] += float(rec["epsilon"])

    def spent(self, tenant: str) -> float:
        """Epsilon ``tenant`` has spent so far."""
        with self._lock:
            return self._spent[tenant]

    def charge(self, tenant: str, epsilon: float, budget: float, query_key: str) -> float:
        """Record ``epsilon`` against ``tenant``; raises :class:`BudgetExhausted` (nothing recorded) when the
        total would exceed ``budget``. Returns the tenant's new total."""
        with self._lock:
            total = self._spent[tenant] + epsilon
            if total > budget + 1e-9:
                raise BudgetExhausted(
                    f"privacy budget exhausted: this query needs epsilon={epsilon:g}, "
                    f"{max(budget - self._spent[tenant], 0.0):g} of {budget:g} left"
                )
            append_durably(self.path, json.dumps({"tenant": tenant, "epsilon": epsilon, "key": query_key}))
            self._spent[tenant] = total
            return total
