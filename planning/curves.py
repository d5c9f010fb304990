"""Response curves: daily incremental revenue ``a * (1 - exp(-x / s))`` of daily spend ``x``, and the fits
each planner can make from what it sees.

- :func:`fit_brand` (full data): per SKU x placement, from the brand's DAILY campaign data (spend and the lift
  tests' incremental revenue where the brand has them — their holdout term modelled rather than taken day by day,
  :func:`_lift_with_modelled_holdout` — else attributed revenue, which over-states the response: :func:`response`),
  ``a`` by least squares per cell and ``s = m * mean(x)`` with ``m`` on a grid: first one ``m`` per placement
  (pooled over SKUs), then each cell's own ``m`` shrunk towards it by a prior whose width is chosen on held-out
  weeks (:func:`_cell_shapes`: noisy cells keep the pooled shape, clean ones get their own). ``x`` is the spend
  carried over from earlier days (geometric adstock, one carry-over per placement from :data:`CARRYOVERS`, kept
  where it lowers the BIC) and the response is scaled per weekday (factors kept only where they forecast the other
  half of the weeks better); the curves describe an average day of a flat spend.
- :func:`fit_aggregates` (clean room): a per-placement shape ``m_p`` from released placement x day totals
  (attributed revenue, no baseline term: aggregates cannot separate it) with one carry-over pooled over the
  placements whose every day was released, then each released SKU x placement cell's level from its totals.
  Suppressed cells get no curve.
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


# the carry-over grid: the share of a day's effective spend carried on to the next
CARRYOVERS = tuple(round(0.1 * i, 1) for i in range(9))


@dataclass
class BrandFit:
    """The full-data fit: curves per cell, baseline daily units per SKU, the carry-over chosen per placement and
    the day-of-week factors of the response (None: no weekly swing that forecasts held-out weeks better)."""

    curves: list[Curve]
    baseline: np.ndarray
    carryover: dict[str, float]
    weekday: list[float] | None
    holdout_modelled: tuple[int, int] | None = None  # (cells, of cells) fitted with the modelled holdout term

    def describe(self) -> dict[str, object]:
        """What the fit found, for a plan's ``spend_analysis``: carry-over per placement, weekday factors and in how
        many cells the lift tests' holdout term was modelled ("k/n", None without lift tests)."""
        names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        return {
            "carryover": {p: round(c, 2) for p, c in self.carryover.items()},
            "weekday_factors": None
            if self.weekday is None
            else {names[d]: round(w, 3) for d, w in enumerate(self.weekday)},
            "holdout_modelled": None
            if self.holdout_modelled is None
            else "{}/{}".format(*self.holdout_modelled),
        }

    def fitted_on(self, data: BrandData) -> str:
        """What the curves were fitted on, in words (:func:`response`, and where the holdout term was modelled)."""
        label = response(data)[1]
        if self.holdout_modelled is not None and self.holdout_modelled[0] > 0:
            label += ", their holdout term modelled in {} of {} cells".format(*self.holdout_modelled)
        return label


def _bic(sse: float, n: int, params: int) -> float:
    return n * float(np.log(max(sse, 1e-12) / max(n, 1))) + params * float(np.log(max(n, 2)))


def _weekday_factors(fitted: np.ndarray, y: np.ndarray, weekday: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Least-squares factor per weekday of ``y ~ w[weekday] * fitted`` over the days ``use``, scaled to mean 1
    (1 for a weekday with no day in ``use``)."""
    w = np.ones(7)
    for d in range(7):
        on = use & (weekday == d)
        den = float((fitted[:, :, on] ** 2).sum())
        if on.any() and den > 0:
            w[d] = float((fitted[:, :, on] * y[:, :, on]).sum()) / den
    w = np.clip(w, 0.05, None)
    out: np.ndarray = w / w.mean()
    return out


def _weekly_helps(fitted: np.ndarray, y: np.ndarray, weekday: np.ndarray, week: np.ndarray) -> bool:
    """Whether weekday factors estimated on odd weeks lower the squared error on even weeks AND the other way
    round (a two-fold check by week: in-sample criteria admit spurious swings under heavy-tailed lift noise)."""
    for fold in (0, 1):
        train, test = week % 2 == fold, week % 2 != fold
        if not train.any() or not test.any():
            return False
        w = _weekday_factors(fitted, y, weekday, train)
        plain = float(((fitted[:, :, test] - y[:, :, test]) ** 2).sum())
        swung = float(((fitted[:, :, test] * w[weekday[test]] - y[:, :, test]) ** 2).sum())
        if swung >= plain:
            return False
    return True


def _fit_cells(
    carried: dict[float, np.ndarray], y: np.ndarray, factor: np.ndarray, mean_x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per placement the (carry-over, shape) pair of least squared error, each cell's level by least squares:
    (a, s, carry-over, SSE) with a, s of shape (n, P) and the last two per placement. ``factor`` multiplies the
    response per day (weekday factors, 1 without)."""
    n, P = mean_x.shape
    best_sse, best_a, best_s, best_c = np.full(P, np.inf), np.zeros((n, P)), np.ones((n, P)), np.zeros(P)
    for c, x in carried.items():
        for m in GRID:  # one shape per placement, pooled over SKUs (per-cell shapes overfit daily noise)
            s = m * mean_x
            g = _g(x, s[:, :, None]) * factor
            a = np.maximum((g * y).sum(axis=2) / np.maximum((g * g).sum(axis=2), 1e-12), 0.0)
            sse = ((a[:, :, None] * g - y) ** 2).sum(axis=(0, 2))  # (P,)
            better = sse < best_sse
            best_sse[better] = sse[better]
            best_a[:, better], best_s[:, better], best_c[better] = a[:, better], s[:, better], c
    return best_a, best_s, best_c, best_sse


def _fitted(a: np.ndarray, s: np.ndarray, c: np.ndarray, carried: dict[float, np.ndarray]) -> np.ndarray:
    """Each cell's fitted daily response (n, P, T) before weekday factors: level ``a`` times the curve of its
    placement's carried spend (carry-over ``c[p]``, its arrays in ``carried``)."""
    P = a.shape[1]
    out: np.ndarray = np.stack(
        [a[:, p, None] * _g(carried[float(c[p])][:, p], s[:, p, None]) for p in range(P)], 1
    )
    return out


CELL_GRID = np.geomspace(0.1, 10.0, 25)
PRIOR_SDS = (0.0, 0.15, 0.3, 0.6, 1.2, 2.4)  # lognormal prior widths of a cell's shape around its placement's


def _grid_sse(
    x: np.ndarray, y: np.ndarray, factor: np.ndarray, mean_x: np.ndarray, use: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per grid multiplier (K) and cell (n, P): the least-squares level fitted on the days ``use`` and its squared
    error on those days and on the others: (a, sse_in, sse_out), each (K, n, P)."""
    K = len(CELL_GRID)
    n, P = mean_x.shape
    a = np.zeros((K, n, P))
    sse_in = np.zeros((K, n, P))
    sse_out = np.zeros((K, n, P))
    for k, m in enumerate(CELL_GRID):
        g = _g(x, (m * mean_x)[:, :, None]) * factor
        gi, yi = g[:, :, use], y[:, :, use]
        a[k] = np.maximum((gi * yi).sum(axis=2) / np.maximum((gi * gi).sum(axis=2), 1e-12), 0.0)
        r = (a[k][:, :, None] * g - y) ** 2
        sse_in[k], sse_out[k] = r[:, :, use].sum(axis=2), r[:, :, ~use].sum(axis=2)
    return a, sse_in, sse_out


def _choose(sse: np.ndarray, m_pool: np.ndarray, sigma2: np.ndarray, sd: float) -> np.ndarray:
    """Per cell the grid index of the MAP shape: squared error / (2 sigma^2) plus a lognormal prior of width
    ``sd`` around the placement's pooled multiplier (sd 0: the grid point nearest the pooled one)."""
    dist = (np.log(CELL_GRID)[:, None, None] - np.log(m_pool)[None, None, :]) ** 2  # (K, 1, P)
    if sd <= 0:
        return np.broadcast_to(np.argmin(dist, axis=0), sse.shape[1:])
    out: np.ndarray = np.argmin(sse / (2 * sigma2[None]) + dist / (2 * sd * sd), axis=0)
    return out


def _cell_shapes(
    x: np.ndarray, y: np.ndarray, factor: np.ndarray, mean_x: np.ndarray, m_pool: np.ndarray, week: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's own shape, shrunk towards its placement's pooled one: (a, s) of shape (n, P).

    A cell's multiplier is the MAP on :data:`CELL_GRID` under a lognormal prior around the pooled ``m_pool`` (its
    noise variance from the pooled fit's residuals); the prior's width is the one of :data:`PRIOR_SDS` that best
    forecasts held-out weeks (fitted on odd weeks, scored on even ones and the other way round), so clean data
    gets per-cell shapes and noisy data keeps the pooled one."""
    n, P, T = y.shape
    rows = np.arange(n)[:, None], np.arange(P)[None, :]
    full_a, full_sse, _ = _grid_sse(x, y, factor, mean_x, np.ones(T, dtype=bool))
    pooled = _choose(full_sse, m_pool, np.ones((n, P)), 0.0)
    sigma2 = np.maximum(full_sse[(pooled, *rows)] / max(T - 1, 1), 1e-9)
    held = np.zeros(len(PRIOR_SDS))
    for fold in (0, 1):
        use = week % 2 == fold
        if not use.any() or use.all():
            held[1:] = np.inf
            break
        _, sse_in, sse_out = _grid_sse(x, y, factor, mean_x, use)
        for j, sd in enumerate(PRIOR_SDS):
            k = _choose(sse_in, m_pool, sigma2 * use.mean(), sd)
            held[j] += float(sse_out[(k, *rows)].sum())
    k = _choose(full_sse, m_pool, sigma2, PRIOR_SDS[int(np.argmin(held))])
    return full_a[(k, *rows)], CELL_GRID[k] * mean_x


def _lift_with_modelled_holdout(
    x: np.ndarray, attributed: np.ndarray, lift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The lift tests' incremental revenue with the holdout's day-to-day noise taken out (all arrays (n, P, T)),
    and per cell (n, P) whether the model was used.

    A lift test reports attributed revenue minus what the held-out shoppers bought as if exposed, scaled up by
    1 / holdout share: unbiased, but the scaled-up holdout count carries most of its noise (with a 20 % holdout its
    variance is five times the exposed baseline buying it estimates). The brand sees both columns, so it sees that
    estimate (``attributed - lift``) and models it per cell as a saturating curve of the day's spend (more spend,
    more shoppers reached; ``b * g(x; m * mean x)``, one shape per placement on :data:`GRID`, ``b`` by least squares)
    — then subtracts the model from the attributed revenue instead of the day's raw estimate. A cell keeps its raw
    lift where the columns do not read that way (the term below 0 on over a tenth of its days with spend, or not
    growing with spend: e.g. files whose attributed revenue is missing or from another attribution). Measured on the
    synthetic market (tests/unit/test_cell_shapes.py): the error against the true incremental revenue falls, and
    the plans' mean true profit rises (docs/planning.md)."""
    held = attributed - lift
    mean_x = np.maximum(x.mean(axis=2), 1e-6)
    b, s, _, _ = _fit_cells({0.0: x}, held, np.ones(x.shape[2]), mean_x)
    active = x > 0
    consistent = ((held >= 0) & active).sum(axis=2) >= 0.9 * np.maximum(active.sum(axis=2), 1)
    # elsewhere the columns do not read as lift = attributed - holdout: the lift as it is
    use = (b > 0) & consistent
    out: np.ndarray = np.where(use[:, :, None], attributed - b[:, :, None] * _g(x, s[:, :, None]), lift)
    return out, use


def fit_brand(
    data: BrandData,
    days: np.ndarray | None = None,
    carryovers: tuple[float, ...] = CARRYOVERS,
    weekly: bool = True,
    cell_shapes: bool = True,
) -> BrandFit:
    """Curves per (SKU, placement) from the brand's daily campaign data, and the baseline daily units per SKU
    (sell-out on non-promo days minus what the curves explain), from the brand's tables.

    The response of day t is ``w[weekday] * a * g(A_t; s)`` with ``A`` the spend carried over (geometric,
    normalised: :func:`planning.market.carry`, one carry-over per placement from ``carryovers``, kept only where
    it lowers the BIC: the fit pays ln N per parameter) and ``w`` the weekday factors (mean 1; fitted when
    ``weekly``, kept only where those of odd weeks forecast even weeks better and the other way round), so data
    without carry-over or a weekly swing gets the plain fit. ``days`` (indices into
    the history, repeats allowed: a bootstrap resample) selects the days fitted on; carry-over and weekdays are
    computed on the whole history in order first, so a resample keeps each day's own carried spend and weekday.
    A flat spend's steady state is that spend and the factors average 1 over a week, so the curves describe an
    average day of a flat plan. ``cell_shapes``: each cell then gets its own shape, shrunk towards its placement's
    (:func:`_cell_shapes`); false keeps the pooled shapes."""
    from planning.market import carry

    idx = np.arange(data.spend.shape[2]) if days is None else np.asarray(days)
    y = response(data)[0][:, :, idx]  # (n, P, T)
    x_raw = data.spend[:, :, idx]
    modelled: np.ndarray | None = None
    if data.lift is not None:
        y, modelled = _lift_with_modelled_holdout(x_raw, data.attributed[:, :, idx], y)
    mean_x = np.maximum(x_raw.mean(axis=2), 1e-6)  # (n, P)
    carried = {c: carry(data.spend, c)[:, :, idx] for c in carryovers}
    weekday = (data.first_weekday + idx) % 7
    ones = np.ones(len(idx))
    n, P, T = y.shape
    carrying = {k: v for k, v in carried.items() if k > 0}
    if 0.0 in carried and carrying:
        # each carry-over fitted once: the plain fit, the best carrying one, and a carry-over kept per placement
        # only where it beats the plain fit by more than its BIC price
        a, s, c, sse = _fit_cells({0.0: carried[0.0]}, y, ones, mean_x)
        ac, sc, cc, ssec = _fit_cells(carrying, y, ones, mean_x)
        obs = n * T  # observations per placement
        better = np.array([_bic(ssec[p], obs, 2) < _bic(sse[p], obs, 1) for p in range(P)])
        a[:, better], s[:, better], c[better] = ac[:, better], sc[:, better], cc[better]
    else:
        a, s, c, _ = _fit_cells(carried, y, ones, mean_x)
    factors: np.ndarray | None = None
    if weekly and T >= 14:
        fitted = _fitted(a, s, c, carried)
        if _weekly_helps(fitted, y, weekday, idx // 7):
            w = _weekday_factors(fitted, y, weekday, np.ones(T, dtype=bool))
            chosen = {float(v) for v in c}
            a, s, c, _ = _fit_cells({k: carried[k] for k in chosen}, y, w[weekday], mean_x)
            factors = w
    day_factor = ones if factors is None else factors[weekday]
    if cell_shapes:
        x_c = np.stack([carried[float(c[p])][:, p] for p in range(P)], 1)
        a, s = _cell_shapes(x_c, y, day_factor, mean_x, s[0] / mean_x[0], idx // 7)
    explained = _fitted(a, s, c, carried).sum(axis=1) * day_factor / data.facts.price[:, None]
    regular = ~data.facts.promo[:, idx]
    units = data.units[:, idx]
    baseline = np.array(
        [
            max(float((units[i] - explained[i])[regular[i]].mean()) if regular[i].any() else 0.0, 0.0)
            for i in range(n)
        ]
    )
    has_spend = x_raw.sum(axis=2) > 0  # the cells the fit has a curve for
    curves = [
        Curve(data.facts.sku[i], data.placements[p], float(a[i, p]), float(s[i, p]))
        for i in range(n)
        for p in range(P)
        if has_spend[i, p]
    ]
    return BrandFit(
        curves,
        baseline,
        {data.placements[p]: float(c[p]) for p in range(P)},
        None if factors is None else [float(v) for v in factors],
        None if modelled is None else (int((modelled & has_spend).sum()), int(has_spend.sum())),
    )


def fit_shape(spend: np.ndarray, revenue: np.ndarray, carryover: float = 0.0) -> tuple[float, float]:
    """(``m``, squared error): the grid multiplier (``s = m * mean spend``) that best fits ``revenue ~ a g(A; s)``,
    ``A`` the spend carried over with ``carryover`` (``spend``, ``revenue``: consecutive days in order)."""
    from planning.market import carry

    mean_x = max(float(spend.mean()), 1e-6)
    x = carry(spend, carryover)
    best, best_m = np.inf, 1.0
    for m in GRID:
        g = _g(x, m * mean_x)
        a = max(float(g @ revenue) / max(float(g @ g), 1e-12), 0.0)
        sse = float(((a * g - revenue) ** 2).sum())
        if sse < best:
            best, best_m = sse, float(m)
    return best_m, best


def fit_aggregates(
    cells: list[dict[str, object]], daily: list[dict[str, object]], days: int
) -> tuple[list[Curve], dict[str, float]]:
    """Curves for released SKU x placement cells (``sku``, ``placement``, ``spend``, ``revenue`` totals over
    ``days``), shaped by released placement x day cells (``placement``, ``event_date``, ``spend``, ``revenue``),
    and the carry-over per placement: one for all placements whose every day was released (pooled: 56 daily
    totals of one placement are too few to tell carry-over from noise), kept only where it lowers the BIC; 0 for
    a placement with a missing day (a gap breaks the carried spend)."""
    series: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}
    for placement in sorted({str(c["placement"]) for c in daily}):
        rows = sorted(
            (c for c in daily if c["placement"] == placement), key=lambda c: str(c.get("event_date", ""))
        )
        x = np.array([float(c["spend"]) for c in rows])  # type: ignore[arg-type]
        y = np.array([float(c["revenue"]) for c in rows])  # type: ignore[arg-type]
        if len(rows) >= 3:
            series[placement] = (x, y, len(rows) == days and all("event_date" in c for c in rows))
    whole = [p for p, (_, _, w) in series.items() if w]
    best_c, best_bic = 0.0, np.inf
    if whole:
        n_obs = sum(len(series[p][0]) for p in whole)
        for carried in CARRYOVERS:
            sse = sum(fit_shape(series[p][0], series[p][1], carried)[1] for p in whole)
            bic = _bic(sse, n_obs, len(whole) + (carried > 0))
            if bic < best_bic:
                best_c, best_bic = float(carried), bic
    carryover = {p: best_c if w else 0.0 for p, (_, _, w) in series.items()}
    shapes = {p: fit_shape(x, y, carryover[p])[0] for p, (x, y, _) in series.items()}
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
    return curves, carryover
