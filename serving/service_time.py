"""How long a request takes once dispatched: a fixed per-request overhead plus a time per unit of cost.

Contract of :class:`ServiceTime`: :meth:`predict` gives seconds for a request of ``cost`` units (1 + its
``max_tokens``); :meth:`observe` feeds one completed request (its cost, its seconds from dispatch to end). The two
parameters are fitted by exponentially weighted least squares (each observation's weight decays by ``decay``
per later one: the fit follows the last ~10 requests), so a burst of long requests after a run of short ones is
predicted from the same line: one seconds-per-unit ratio charges short requests' overhead to every unit and
over-predicts long ones after short ones (and the other way round). Until requests of different costs have been
seen, the overhead stays at its last estimate (0 at first) and the time per unit takes the rest. Pure Python.
"""

from __future__ import annotations


class ServiceTime:
    """See the module contract. ``initial_unit_s``: seconds per unit until the first observation."""

    def __init__(self, initial_unit_s: float, decay: float = 0.9) -> None:
        self.overhead_s = 0.0
        self.unit_s = initial_unit_s
        self._decay = decay
        self._n = self._c = self._cc = self._s = self._cs = 0.0  # weighted sums: 1, cost, cost², s, cost·s

    def predict(self, cost: float) -> float:
        """Predicted seconds of service for a request of ``cost`` units."""
        return self.overhead_s + max(cost, 0.0) * self.unit_s

    def observe(self, cost: float, seconds: float) -> None:
        """One completed request: refit overhead and time per unit."""
        d, cost, seconds = self._decay, max(cost, 1e-9), max(seconds, 0.0)
        self._n = d * self._n + 1
        self._c = d * self._c + cost
        self._cc = d * self._cc + cost * cost
        self._s = d * self._s + seconds
        self._cs = d * self._cs + cost * seconds
        mean_c, mean_s = self._c / self._n, self._s / self._n
        var = self._cc / self._n - mean_c * mean_c
        if self._n >= 2.5 and var > (0.1 * mean_c) ** 2:  # costs spread enough to tell the two apart
            slope = (self._cs / self._n - mean_c * mean_s) / var
            intercept = mean_s - slope * mean_c
            if slope > 0 and intercept >= 0:
                self.overhead_s, self.unit_s = intercept, slope
                return
            if slope > 0:  # a negative overhead: a line through the origin
                self.overhead_s, self.unit_s = 0.0, self._cs / self._cc
                return
        self.overhead_s = min(self.overhead_s, mean_s)
        self.unit_s = (mean_s - self.overhead_s) / mean_c
