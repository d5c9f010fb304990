"""A synthetic retail-media market with ground truth, deterministic by seed.

One retailer, several brands, SKUs (category, price, margin, stock, promo calendar, price elasticity),
placements and shoppers; TRUE saturating response curves per SKU x placement: daily incremental revenue
``a * (1 - exp(-spend / s))``. Optionally (``carryover``, ``weekly_amplitude``) a day's response follows the
spend carried over from earlier days (geometric adstock, :func:`carry`) and a day-of-week swing of traffic
(:func:`weekly`); the truth's curves stay those of an average day of a flat spend (its steady state). History
of ``days`` days of flighted, varied spend produces:

- the retailer's event log (impressions/clicks carrying ad cost, purchases attributed to a placement — which
  include a share of baseline sales of exposed shoppers, so attributed ROAS overstates iROAS), in the
  retailer's OWN field names (:data:`RETAILER_FIELDS`; see :mod:`planning.harmonize`);
- each brand's private tables: SKU facts (price, margin, stock, elasticity, promo days), its own spend and
  campaign-report attributed revenue per SKU x placement x day, its own sell-out (units, revenue) per SKU x day,
  and (``holdout_share`` > 0) the retailer's lift tests: incremental revenue per SKU x placement x day measured
  against a random holdout of shoppers — unbiased but noisy, the honest input for response curves;
- :class:`Truth` (the curves, baselines and stock headroom over the planning horizon), which only the
  evaluator reads — planners receive :class:`BrandData` or clean-room answers, never a :class:`Market`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

CATEGORIES = ["coffee", "tea", "cereal", "snacks", "juice", "pet food"]
PLACEMENTS = ["sponsored_products", "onsite_display", "offsite", "search_banner", "email"]
START = dt.date(2026, 1, 5)

# the retailer's own column names -> our schema (what harmonisation has to discover)
RETAILER_FIELDS = {
    "cust_key": "shopper_id",
    "txn_day": "event_date",
    "evt": "event_type",
    "item_id": "sku",
    "mfr_name": "brand",
    "dept": "category",
    "ad_slot": "placement",
    "qty": "quantity",
    "sales_amt": "revenue",
    "ad_cost": "cost",
    "gross_margin": "margin",
    "on_hand": "stock_level",
    "promo": "promo_flag",
    "store_region": None,  # not in our schema: reported as unmapped
}


class MarketConfig(BaseModel):
    """Size and seed of the synthetic market."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(default=7, ge=0, description="Everything is a function of this seed.")
    retailer: str = Field(default="acme", description="The retailer (its clean room holds the event log).")
    brands: list[str] = Field(
        default_factory=lambda: ["brewmax", "beanco", "dailygrind"], min_length=1, description="Brands."
    )
    skus_per_brand: int = Field(default=12, ge=1, le=20000, description="SKUs of each brand.")
    placements: int = Field(default=3, ge=1, le=len(PLACEMENTS), description="Ad placements (first N).")
    days: int = Field(default=56, ge=7, le=730, description="Days of history.")
    shoppers: int = Field(default=3000, ge=10, description="Distinct shoppers at the retailer.")
    horizon_days: int = Field(default=28, ge=1, le=365, description="Days the plan covers.")
    holdout_share: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="Share of shoppers the retailer's ad server holds out at random (ghost ads) to measure each "
        "campaign's incremental revenue per SKU x placement x day, reported to the brand beside the attributed "
        "revenue. 0: no lift tests (the brand sees attributed revenue only).",
    )
    carryover: float = Field(
        default=0.0,
        ge=0.0,
        le=0.9,
        description="Ad carry-over (geometric adstock): a day's response follows (1 - c) x that day's spend + c x "
        "the carried spend of the day before, so a dollar keeps working on later days; a flat spend's steady "
        "state is that spend, so the true curves of a flat plan are unchanged. 0: none.",
    )
    weekly_amplitude: float = Field(
        default=0.0,
        ge=0.0,
        le=0.9,
        description="Day-of-week swing of shopper traffic: baseline sales and ad response on a day are x (1 + "
        "amplitude x sin(2 pi (weekday - 1) / 7)), weekday 0 = Monday (busiest Thursday to Saturday, mean 1 "
        "over a week). 0: none.",
    )


@dataclass
class SkuFacts:
    """A brand's private facts about its SKUs (arrays aligned by SKU)."""

    sku: list[str]
    category: list[str]
    price: np.ndarray
    margin: np.ndarray  # fraction of revenue
    stock: np.ndarray  # units on hand for the horizon
    elasticity: np.ndarray
    promo: np.ndarray  # (sku, day) bool: promo days of the history
    discount: np.ndarray  # per sku, on promo days


@dataclass
class BrandData:
    """What a brand knows first-hand (never the true curves)."""

    brand: str
    facts: SkuFacts
    placements: list[str]
    spend: np.ndarray  # (sku, placement, day): its own ad spend
    attributed: np.ndarray  # (sku, placement, day): revenue the retailer's campaign report attributes
    units: np.ndarray  # (sku, day): its own sell-out units
    revenue: np.ndarray  # (sku, day)
    horizon_days: int
    lift: np.ndarray | None = None  # (sku, placement, day): holdout-measured incremental revenue, if any
    first_weekday: int = 0  # weekday of the history's first day (0 = Monday)
    first_date: dt.date | None = None  # the history's first day (brand files; the market's START)


@dataclass
class Truth:
    """Ground truth, for the evaluator only: daily curves and baselines over the planning horizon."""

    a: np.ndarray  # (sku, placement) daily saturation revenue
    s: np.ndarray  # (sku, placement) daily spend scale
    baseline_units: np.ndarray  # (sku,) per day, no promo
    headroom_units: np.ndarray  # (sku,) stock left for incremental sales over the horizon
    spend_before: np.ndarray | None = (
        None  # (sku, placement) daily spend level before the history (carry-over)
    )


@dataclass
class Market:
    """The whole synthetic world (generator and evaluator side)."""

    config: MarketConfig
    skus: list[str]
    brand_of: list[str]
    placements: list[str]
    facts: SkuFacts
    truth: Truth
    spend: np.ndarray  # (sku, placement, day)
    attributed: np.ndarray  # (sku, placement, day): attributed revenue (what campaign reports show)
    units: np.ndarray  # (sku, day)
    events: dict[str, np.ndarray] = field(default_factory=dict)  # retailer's log, our column names
    lift: np.ndarray | None = None  # (sku, placement, day): lift-test incremental revenue (holdout_share > 0)

    def brand_data(self, brand: str) -> BrandData:
        """The brand's private tables: its SKUs only, no truth."""
        if brand not in self.config.brands:
            raise KeyError(f"unknown brand {brand!r} (brands: {self.config.brands})")
        idx = [i for i, b in enumerate(self.brand_of) if b == brand]
        f = self.facts
        facts = SkuFacts(
            [f.sku[i] for i in idx],
            [f.category[i] for i in idx],
            f.price[idx],
            f.margin[idx],
            f.stock[idx],
            f.elasticity[idx],
            f.promo[idx],
            f.discount[idx],
        )
        price = f.price[idx][:, None] * np.where(f.promo[idx], 1 - f.discount[idx][:, None], 1.0)
        return BrandData(
            brand,
            facts,
            self.placements,
            self.spend[idx],
            self.attributed[idx],
            self.units[idx],
            self.units[idx] * price,
            self.config.horizon_days,
            None if self.lift is None else self.lift[idx],
            START.weekday(),
            START,
        )

    def true_incremental_units(self) -> np.ndarray:
        """The history's TRUE incremental units per SKU x placement x day (carry-over and weekday swing
        included): what a perfect lift test would measure, for the evaluator's ceiling studies only."""
        cfg, t = self.config, self.truth
        traffic = weekly(cfg.days, cfg.weekly_amplitude, START.weekday())
        carried = carry(self.spend, cfg.carryover, start=t.spend_before)
        units: np.ndarray = t.a[:, :, None] * traffic * (1 - np.exp(-carried / t.s[:, :, None]))
        out: np.ndarray = units / self.facts.price[:, None, None]
        return out

    def brand_index(self, brand: str) -> list[int]:
        """Rows of ``brand``'s SKUs in the market arrays."""
        return [i for i, b in enumerate(self.brand_of) if b == brand]

    def write_retailer_log(self, path: Path) -> Path:
        """The event log as the retailer exports it: CSV in the retailer's own field names (plus a
        ``store_region`` our schema lacks), written by DuckDB straight from the arrays."""
        import duckdb

        native = {v: k for k, v in RETAILER_FIELDS.items() if v}
        n = len(next(iter(self.events.values())))
        log = {native[c]: col for c, col in self.events.items()}  # DuckDB scans this local by its name
        log["store_region"] = np.where(np.arange(n) % 2 == 1, "north", "south")
        con = duckdb.connect()
        try:
            con.execute(f"COPY (SELECT * FROM log) TO '{_sql_path(path)}' (HEADER, DELIMITER ',')")
        finally:
            con.close()
        return path


def _sql_path(path: Path) -> str:
    """A file path as a SQL string literal body."""
    return str(path).replace("'", "''")


def generate(config: MarketConfig) -> Market:
    """Build the market for ``config`` (same config, same market, bit for bit)."""
    rng = np.random.default_rng(config.seed)
    nb, per, D = len(config.brands), config.skus_per_brand, config.days
    n = nb * per
    placements = PLACEMENTS[: config.placements]
    P = len(placements)
    skus = [f"{b[:3].upper()}-{j:04d}" for b in config.brands for j in range(per)]
    brand_of = [b for b in config.brands for _ in range(per)]
    category = [CATEGORIES[int(c)] for c in rng.integers(0, len(CATEGORIES), n)]
    price = np.round(rng.uniform(2.0, 20.0, n), 2)
    margin = np.round(rng.uniform(0.08, 0.55, n), 3)
    popularity = 1.0 / (1.0 + np.arange(per)) ** 0.8  # Zipf-like within each brand: a long tail
    base_units = np.tile(popularity, nb) * rng.uniform(6.0, 14.0, n)
    elasticity = np.round(rng.uniform(1.0, 3.0, n), 2)
    discount = np.round(rng.uniform(0.1, 0.3, n), 2)
    promo = rng.random((n, D)) < 0.1
    horizon_base = base_units * config.horizon_days
    stock = np.floor(horizon_base * rng.uniform(1.05, 3.0, n))
    low = (
        rng.random(n) < 0.12
    )  # some SKUs will barely cover their baseline demand: no room for ad-driven sales
    stock[low] = np.floor(horizon_base[low] * rng.uniform(0.85, 1.0, int(low.sum())))
    headroom = stock - horizon_base
    eff = rng.uniform(0.5, 1.5, P)  # placement effectiveness
    a = price[:, None] * base_units[:, None] * eff[None, :] * rng.uniform(0.1, 0.9, (n, P))
    s = (2.0 + 30.0 * np.tile(popularity, nb)[:, None]) * rng.uniform(0.5, 2.0, (n, P))
    # history: flighted spend around a per-cell level, varied day to day (what makes curves identifiable)
    level = s * rng.uniform(0.3, 2.0, (n, P))
    on = rng.random((n, P, D)) < 0.7
    spend = np.round(level[:, :, None] * rng.lognormal(0.0, 0.6, (n, P, D)) * on, 2)
    traffic = weekly(D, config.weekly_amplitude, START.weekday())  # (D,): all 1 without a weekly swing
    carried = carry(spend, config.carryover, start=level)  # spend itself without carry-over
    inc_rev = a[:, :, None] * traffic * (1 - np.exp(-carried / s[:, :, None]))  # (n, P, D)
    promo_mult = np.where(promo, 1 + elasticity[:, None] * discount[:, None], 1.0)
    unit_price = price[:, None] * np.where(promo, 1 - discount[:, None], 1.0)
    mean_units = base_units[:, None] * promo_mult * traffic + inc_rev.sum(axis=1) / price[:, None]
    units = rng.poisson(mean_units).astype(float)
    # attributed purchases: the incremental ones plus a share of baseline buyers who saw an ad that day
    halo = rng.uniform(0.1, 0.4, P)
    exposed = 1 - np.exp(-spend / (3 * s[:, :, None]))
    halo_units = halo[None, :, None] * base_units[:, None, None] * traffic * exposed
    attributed_units = rng.poisson(inc_rev / price[:, None, None] + halo_units)
    market = Market(
        config,
        skus,
        brand_of,
        placements,
        SkuFacts(skus, category, price, margin, stock, elasticity, promo, discount),
        Truth(a, s, base_units, headroom, level),
        spend,
        attributed_units * unit_price[:, None, :],
        units,
    )
    market.events = _events(market, rng, attributed_units, unit_price)
    if config.holdout_share > 0:  # its own random stream: the rest of the market is the same with or without
        lift_rng = np.random.default_rng([config.seed, 1])
        market.lift = _lift(lift_rng, config.holdout_share, attributed_units, halo_units, unit_price)
    return market


def weekly(days: int, amplitude: float, first_weekday: int = 0) -> np.ndarray:
    """Shopper traffic per day of a history whose first day is ``first_weekday`` (0 = Monday): ``1 + amplitude
    x sin(2 pi (weekday - 1) / 7)``, which averages 1 over any whole week."""
    wd = (first_weekday + np.arange(days)) % 7
    out: np.ndarray = 1.0 + amplitude * np.sin(2 * np.pi * (wd - 1) / 7)
    return out


def carry(spend: np.ndarray, c: float, start: np.ndarray | None = None) -> np.ndarray:
    """Geometric adstock along the last axis, normalised: ``A_t = (1 - c) x_t + c A_{t-1}`` (a flat spend's
    steady state is that spend); ``A_{-1}`` is ``start`` (the spend level before the history; default the first
    week's mean). ``c`` = 0 returns ``spend`` itself."""
    if c <= 0:
        return spend
    prev = spend[..., : min(7, spend.shape[-1])].mean(axis=-1) if start is None else np.asarray(start, float)
    out = np.empty(spend.shape, dtype=float)
    for t in range(spend.shape[-1]):
        prev = (1 - c) * spend[..., t] + c * prev
        out[..., t] = prev
    return out


def _lift(
    rng: np.random.Generator, share: float, attributed: np.ndarray, halo: np.ndarray, unit_price: np.ndarray
) -> np.ndarray:
    """The lift tests' incremental revenue per SKU x placement x day: the attributed units minus the units the
    held-out shoppers (``share`` of them, ghost ads) bought as if exposed, scaled up to the whole audience —
    unbiased for the incremental units, noisier the smaller the holdout (it can be negative on a day)."""
    holdout = rng.poisson(share * halo) / share
    out: np.ndarray = (attributed - holdout) * unit_price[:, None, :]
    return out


def _events(market: Market, rng: np.random.Generator, attributed: np.ndarray, unit_price: np.ndarray) -> dict:
    """The retailer's log, vectorised: per SKU x placement x day up to 4 impression rows sharing the day's
    cost, one click row, one purchase row per attributed unit; shoppers drawn from a skewed pool. Columns
    are NumPy arrays in our schema's names, rows grouped by event type."""
    cfg = market.config
    shopper_w = rng.pareto(1.5, cfg.shoppers) + 1
    shopper_w /= shopper_w.sum()
    _, P, D = market.spend.shape
    x = market.spend.ravel()
    k = attributed.ravel().astype(np.int64)
    cell = np.arange(x.size)
    imps = np.where(x > 0, np.minimum(4, np.floor(x / 5).astype(np.int64) + 1), 0)
    clicks = (x > 0).astype(np.int64)
    idx = np.concatenate([np.repeat(cell, imps), np.repeat(cell, clicks), np.repeat(cell, k)])
    kind = np.concatenate(
        [np.zeros(imps.sum(), np.int8), np.ones(clicks.sum(), np.int8), np.full(k.sum(), 2, np.int8)]
    )
    i, rest = np.divmod(idx, P * D)
    p, d = np.divmod(rest, D)
    f = market.facts
    cost = np.where(kind == 0, x[idx] / np.maximum(imps[idx], 1), 0.0)
    revenue = np.where(kind == 2, unit_price[i, d], 0.0)
    who = rng.choice(cfg.shoppers, size=idx.size, p=shopper_w)
    dates = np.array([(START + dt.timedelta(days=j)).isoformat() for j in range(D)])
    return {
        "shopper_id": np.char.add("C", np.char.zfill(who.astype(str), 6)),
        "event_date": dates[d],
        "event_type": np.array(["impression", "click", "purchase"])[kind],
        "sku": np.array(market.skus)[i],
        "brand": np.array(market.brand_of)[i],
        "category": np.array(f.category)[i],
        "placement": np.array(market.placements)[p],
        "quantity": (kind == 2).astype(np.int64),
        "revenue": np.round(revenue, 2),
        "cost": np.round(cost, 4),
        "margin": f.margin[i],
        "stock_level": f.stock[i].astype(np.int64),
        "promo_flag": f.promo[i, d],
    }
