"""Response curves: daily incremental revenue ``a * (1 - exp(-x / s))`` of daily spend ``x``, and the fits
each planner can make from what it sees.

- :func:`fit_brand` (full data): per SKU x placement, from the brand's DAILY campaign data (spend and the lift
  tests' incremental revenue where the brand has them, else attributed revenue, which over-states the response:
  :func:`response`), ``a`` by least squares per cell and ``s = m * mean(x)`` with ``m`` on a grid, one ``m`` per
  placement (pooled over SKUs: per-cell shapes overfit daily noise).
- :func:`fit_aggregates` (clean room): a per-placement shape ``m_p`` from released placement x day totals
  (attributed revenue, no baseline term: aggregates cannot separate it), then each released SKU x placement
  cell's level from its totals. Suppressed cells get no curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planning.market import BrandData

GRID = np.geomspace(0.2, 5.0, 14)


@dataclass(frozen=True)
class Curve:
    """One cell's fitted daily curve."""

    sku: str
    placement: str
    a: float
    s: float

    def revenue(self, period_spend: float, days: int) -> float:
        """Incremental revenue of ``period_spend`` spread evenly over ``days``."""
        if self.a <= 0 or period_spend <= 0:
            return 0.0
        return days * self.a * (1 - float(np.exp(-period_spend / (days * self.s))))


def _g(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1 - np.exp(-x / np.maximum(s, 1e-9))
    return out


def response(data: BrandData) -> tuple[np.ndarray, str]:
    """What the full-data curves are fitted on: (revenue per SKU x placement x day, its name)."""
    if data.lift is not None:
        return data.lift, "incremental revenue (lift tests)"
    return data.attributed, "attributed revenue (over-states the incremental response)"


def fit_brand(data: BrandData) -> tuple[list[Curve], np.ndarray]:
    """Curves per (SKU, placement) from the brand's daily campaign data, and the baseline daily units per
    SKU (sell-out on non-promo days minus what the curves explain), from the brand's tables."""
    x, y = data.spend, response(data)[0]  # (n, P, T)
    mean_x = np.maximum(x.mean(axis=2), 1e-6)  # (n, P)
    best_sse = np.full(mean_x.shape, np.inf)
    best_a = np.zeros(mean_x.shape)
    best_s = np.ones(mean_x.shape)
    for m in GRID:  # one shape per placement, pooled over SKUs (per-cell shapes overfit daily noise)
        s = m * mean_x
        g = _g(x, s[:, :, None])
        a = np.maximum((g * y).sum(axis=2) / np.maximum((g * g).sum(axis=2), 1e-12), 0.0)
        sse = np.broadcast_to(((a[:, :, None] * g - y) ** 2).sum(axis=(0, 2)), mean_x.shape)
        better = sse < best_sse
        best_sse[better], best_a[better], best_s[better] = sse[better], a[better], s[better]
    n, P, _ = x.shape
    explained = (best_a[:, :, None] * _g(x, best_s[:, :, None])).sum(axis=1) / data.facts.price[:, None]
    regular = ~data.facts.promo
    baseline = np.array(
        [
            max(float((data.units[i] - explained[i])[regular[i]].mean()) if regular[i].any() else 0.0, 0.0)
            for i in range(n)
        ]
    )
    curves = [
        Curve(data.facts.sku[i], data.placements[p], float(best_a[i, p]), float(best_s[i, p]))
        for i in range(n)
        for p in range(P)
        if x[i, p].sum() > 0
    ]
    return curves, baseline


def fit_shape(spend: np.ndarray, revenue: np.ndarray) -> float:
    """The grid multiplier ``m`` (``s = m * mean spend``) that best fits ``revenue ~ a g(spend; s)``."""
    mean_x = max(float(spend.mean()), 1e-6)
    best, best_m = np.inf, 1.0
    for m in GRID:
        g = _g(spend, m * mean_x)
        a = max(float(g @ revenue) / max(float(g @ g), 1e-12), 0.0)
        sse = float(((a * g - revenue) ** 2).sum())
        if sse < best:
            best, best_m = sse, float(m)
    return best_m


def fit_aggregates(cells: list[dict[str, object]], daily: list[dict[str, object]], days: int) -> list[Curve]:
    """Curves for released SKU x placement cells (``sku``, ``placement``, ``spend``, ``revenue`` totals over
    ``days``), shaped by released placement x day cells (``placement``, ``spend``, ``revenue``)."""
    shapes: dict[str, float] = {}
    for placement in {str(c["placement"]) for c in daily}:
        rows = [c for c in daily if c["placement"] == placement]
        x = np.array([float(c["spend"]) for c in rows])  # type: ignore[arg-type]
        y = np.array([float(c["revenue"]) for c in rows])  # type: ignore[arg-type]
        shapes[placement] = fit_shape(x, y) if len(rows) >= 3 else 1.0
    curves = []
    for c in cells:
        spend, revenue = float(c["spend"]), float(c["revenue"])  # type: ignore[arg-type]
        if spend <= 0 or revenue <= 0:
            continue
        m = shapes.get(str(c["placement"]), 1.0)
        x_bar = spend / days
        s = m * x_bar
        a = (revenue / days) / float(1 - np.exp(-1 / m))
        curves.append(Curve(str(c["sku"]), str(c["placement"]), a, s))
    return curves
