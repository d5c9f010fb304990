"""A brand's own files as planner input: read, validated row by row, turned into :class:`BrandData`.

A directory with three tables, each as ``<name>.csv`` or ``<name>.parquet`` (schema in docs/planning.md):

- ``products``: ``sku``, ``category``, ``price`` (> 0), ``margin`` (fraction of price, 0..1), ``stock`` (units on
  hand for the horizon, >= 0); optional ``discount`` (promo discount, 0..1) and ``elasticity`` (>= 0);
- ``sales``: ``date`` (YYYY-MM-DD), ``sku``, ``units`` (>= 0), ``revenue`` (>= 0); optional ``promo`` (0/1,
  true/false): the brand's sell-out per SKU and day;
- ``media``: ``date``, ``sku``, ``placement``, ``spend`` (>= 0), ``attributed_revenue`` (>= 0): its retail-media
  spend and the campaign report's attributed revenue per SKU, placement and day; optional
  ``incremental_revenue`` (any sign): the retailer's lift tests (holdout-measured incremental revenue) — when the
  column is there the curves are fitted on it instead of the attributed revenue, which over-states the response.

The history is every day from the first to the last date in ``sales`` and ``media`` (a day without a row is 0
units or 0 spend). Any problem is a :class:`BrandDataError` naming the file and the row (1-based, header
excluded) — missing columns, unknown SKUs, bad dates, negative or non-finite numbers, duplicate keys — and
nothing is planned. :func:`write_example` writes a market's brand as such a directory (synthetic, and labelled
so) and :func:`backtest` measures a planner's forecasts on held-out days, the evaluation real data allows.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np

from planning.market import BrandData, Market, SkuFacts
from planning.planner import PlanningError

MIN_DAYS = 14
REQUIRED = {
    "products": ("sku", "category", "price", "margin", "stock"),
    "sales": ("date", "sku", "units", "revenue"),
    "media": ("date", "sku", "placement", "spend", "attributed_revenue"),
}


class BrandDataError(PlanningError):
    """A brand's files cannot be planned from; the message names the file and the row."""


def _read(directory: Path, name: str) -> tuple[str, list[dict[str, Any]]]:
    """(file name, rows as dicts in file order) of ``<name>.csv`` or ``<name>.parquet``."""
    csv_path, parquet_path = directory / f"{name}.csv", directory / f"{name}.parquet"
    if csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
        path = csv_path
    elif parquet_path.is_file():
        import duckdb

        con = duckdb.connect()
        try:
            cur = con.execute("SELECT * FROM read_parquet(?)", [str(parquet_path)])
            columns = [d[0] for d in cur.description]
            rows = [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
        finally:
            con.close()
        path = parquet_path
    else:
        raise BrandDataError(f"{directory}: no {name}.csv or {name}.parquet")
    missing = [c for c in REQUIRED[name] if c not in columns]
    if missing:
        raise BrandDataError(f"{path.name}: missing columns {missing} (has {list(columns)})")
    return path.name, rows


def _number(
    file: str, row: int, rec: dict[str, Any], column: str, low: float = 0.0, high: float = math.inf
) -> float:
    raw = rec.get(column)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BrandDataError(f"{file} row {row}: {column} is not a number ({raw!r})") from None
    if not math.isfinite(value) or value < low or value > high:
        bounds = f">= {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise BrandDataError(f"{file} row {row}: {column} must be {bounds}, got {raw!r}")
    return value


def _text(file: str, row: int, rec: dict[str, Any], column: str) -> str:
    value = str(rec.get(column) or "").strip()
    if not value:
        raise BrandDataError(f"{file} row {row}: {column} is blank")
    return value


def _date(file: str, row: int, rec: dict[str, Any]) -> dt.date:
    raw = rec.get("date")
    if isinstance(raw, dt.date):
        return raw
    try:
        return dt.date.fromisoformat(str(raw).strip())
    except ValueError:
        raise BrandDataError(f"{file} row {row}: date is not YYYY-MM-DD ({raw!r})") from None


def _products(directory: Path) -> tuple[SkuFacts, dict[str, int]]:
    file, rows = _read(directory, "products")
    if not rows:
        raise BrandDataError(f"{file}: no products")
    index: dict[str, int] = {}
    cols: dict[str, list[Any]] = {
        k: [] for k in ("sku", "category", "price", "margin", "stock", "disc", "el")
    }
    for n, rec in enumerate(rows, start=1):
        sku = _text(file, n, rec, "sku")
        if sku in index:
            raise BrandDataError(f"{file} row {n}: sku {sku!r} again (first at row {index[sku] + 1})")
        index[sku] = n - 1
        cols["sku"].append(sku)
        cols["category"].append(_text(file, n, rec, "category"))
        cols["price"].append(_number(file, n, rec, "price", 1e-9))
        cols["margin"].append(_number(file, n, rec, "margin", 0.0, 1.0))
        cols["stock"].append(_number(file, n, rec, "stock"))
        cols["disc"].append(
            _number(file, n, rec, "discount", 0.0, 1.0) if rec.get("discount") not in (None, "") else 0.0
        )
        cols["el"].append(
            _number(file, n, rec, "elasticity") if rec.get("elasticity") not in (None, "") else 0.0
        )
    facts = SkuFacts(
        cols["sku"], cols["category"], np.array(cols["price"]), np.array(cols["margin"]), np.array(cols["stock"]),
        np.array(cols["el"]), np.zeros((len(index), 0), dtype=bool), np.array(cols["disc"]),
    )  # fmt: skip
    return facts, index


def _known(file: str, row: int, rec: dict[str, Any], index: dict[str, int]) -> int:
    sku = _text(file, row, rec, "sku")
    if sku not in index:
        raise BrandDataError(f"{file} row {row}: sku {sku!r} is not in products")
    return index[sku]


def load_brand_dir(directory: Path | str, brand: str | None = None, horizon_days: int = 28) -> BrandData:
    """The brand's files in ``directory`` as :class:`BrandData` (see the module contract)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BrandDataError(f"{directory}: not a directory")
    facts, index = _products(directory)
    sales_file, sales = _read(directory, "sales")
    media_file, media = _read(directory, "media")
    dates = [_date(sales_file, n, r) for n, r in enumerate(sales, start=1)]
    media_dates = [_date(media_file, n, r) for n, r in enumerate(media, start=1)]
    if not dates or not media_dates:
        raise BrandDataError(f"{directory}: {sales_file} and {media_file} need rows")
    first, last = min(dates + media_dates), max(dates + media_dates)
    days = (last - first).days + 1
    if days < MIN_DAYS:
        raise BrandDataError(
            f"{directory}: {days} days of history; at least {MIN_DAYS} are needed to fit curves"
        )
    n = len(index)
    units, revenue, promo = np.zeros((n, days)), np.zeros((n, days)), np.zeros((n, days), dtype=bool)
    seen: dict[tuple[int, int], int] = {}
    for row, (rec, day) in enumerate(zip(sales, dates, strict=True), start=1):
        i, d = _known(sales_file, row, rec, index), (day - first).days
        if (i, d) in seen:
            raise BrandDataError(
                f"{sales_file} row {row}: {facts.sku[i]} on {day} again (first at row {seen[i, d]})"
            )
        seen[i, d] = row
        units[i, d] = _number(sales_file, row, rec, "units")
        revenue[i, d] = _number(sales_file, row, rec, "revenue")
        promo[i, d] = str(rec.get("promo", "")).strip().lower() in ("1", "true", "yes")
    placements = sorted({_text(media_file, row, rec, "placement") for row, rec in enumerate(media, start=1)})
    p_index = {p: j for j, p in enumerate(placements)}
    spend, attributed = np.zeros((n, len(placements), days)), np.zeros((n, len(placements), days))
    lift = np.zeros_like(spend) if "incremental_revenue" in (media[0] if media else {}) else None
    seen_media: dict[tuple[int, int, int], int] = {}
    for row, (rec, day) in enumerate(zip(media, media_dates, strict=True), start=1):
        i, j, d = (
            _known(media_file, row, rec, index),
            p_index[str(rec["placement"]).strip()],
            (day - first).days,
        )
        if (i, j, d) in seen_media:
            raise BrandDataError(
                f"{media_file} row {row}: {facts.sku[i]} x {placements[j]} on {day} again "
                f"(first at row {seen_media[i, j, d]})"
            )
        seen_media[i, j, d] = row
        spend[i, j, d] = _number(media_file, row, rec, "spend")
        attributed[i, j, d] = _number(media_file, row, rec, "attributed_revenue")
        if lift is not None:
            lift[i, j, d] = _number(media_file, row, rec, "incremental_revenue", -math.inf)
    facts.promo = promo
    name = brand or directory.name
    return BrandData(
        name, facts, placements, spend, attributed, units, revenue, horizon_days, lift, first.weekday(), first
    )


def write_example(market: Market, brand: str, directory: Path | str) -> Path:
    """``brand``'s tables of ``market`` as a brand-files directory (CSV), with a README saying it is synthetic."""
    from planning.market import START

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data = market.brand_data(brand)
    f = data.facts
    day = [(START + dt.timedelta(days=d)).isoformat() for d in range(data.units.shape[1])]
    with (out / "products.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sku", "category", "price", "margin", "stock", "discount", "elasticity"])
        for i, sku in enumerate(f.sku):
            w.writerow(
                [sku, f.category[i], f.price[i], f.margin[i], int(f.stock[i]), f.discount[i], f.elasticity[i]]
            )
    with (out / "sales.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["date", "sku", "units", "revenue", "promo"])
        for i, sku in enumerate(f.sku):
            for d, date in enumerate(day):
                w.writerow(
                    [
                        date,
                        sku,
                        int(data.units[i, d]),
                        round(float(data.revenue[i, d]), 2),
                        int(f.promo[i, d]),
                    ]
                )
    with (out / "media.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        lift = data.lift
        w.writerow(
            ["date", "sku", "placement", "spend", "attributed_revenue"]
            + ["incremental_revenue"] * (lift is not None)
        )
        for i, sku in enumerate(f.sku):
            for j, placement in enumerate(data.placements):
                for d, date in enumerate(day):
                    if (
                        data.spend[i, j, d] > 0
                        or data.attributed[i, j, d] > 0
                        or (lift is not None and lift[i, j, d])
                    ):
                        row = [
                            date,
                            sku,
                            placement,
                            data.spend[i, j, d],
                            round(float(data.attributed[i, j, d]), 2),
                        ]
                        w.writerow(row + ([round(float(lift[i, j, d]), 2)] if lift is not None else []))
    (out / "README.md").write_text(
        f"# Example brand data (SYNTHETIC)\n\nGenerated by rmn-lora's synthetic market (seed {market.config.seed}, "
        f"brand {brand}, retailer {market.config.retailer}): not real sales. The schema is documented in "
        'docs/planning.md ("Plan from your own data"). Try: `rmn compare --data <this directory> --budget 1000`.\n'
    )
    return out


def backtest(
    data: BrandData, holdout_days: int, carryovers: tuple[float, ...] | None = None
) -> dict[str, Any]:
    """Fit the full-data curves on all but the last ``holdout_days`` days (``carryovers``: the carry-overs the fit
    may choose; default the whole grid) and forecast each cell's revenue over those days from their actual spend
    (carried over, weekday factors applied where found): WAPE and bias against what the brand measured there (lift tests'
    incremental revenue where it has them, else attributed revenue), in total and per placement — the only truth
    real data has, so a good backtest bounds, but does not prove, a plan's quality."""
    from planning.curves import CARRYOVERS, fit_brand, response
    from planning.market import carry

    days = data.spend.shape[2]
    if not 1 <= holdout_days <= days - MIN_DAYS:
        raise BrandDataError(
            f"holdout_days must be between 1 and {days - MIN_DAYS} for {days} days of history"
        )
    cut = days - holdout_days
    f = data.facts
    # carry-over and weekdays from the whole history in order (causal: a held-out day never informs a fitted one)
    fit = fit_brand(data, np.arange(cut), carryovers or CARRYOVERS)
    factor = (
        np.ones(days)
        if fit.weekday is None
        else np.array(fit.weekday)[(data.first_weekday + np.arange(days)) % 7]
    )
    measured, measured_on = response(data)
    idx, p_idx = {s: i for i, s in enumerate(f.sku)}, {p: j for j, p in enumerate(data.placements)}
    pred, actual = np.zeros(len(data.placements)), np.zeros(len(data.placements))
    err = np.zeros(len(data.placements))
    for c in fit.curves:
        i, j = idx[c.sku], p_idx[c.placement]
        # the carried spend of the held-out days
        x = carry(data.spend[i, j], fit.carryover[c.placement])[cut:]
        g = factor[cut:] * (1 - np.exp(-x / max(c.s, 1e-9)))
        forecast = float((c.a * g).sum()) if c.a > 0 else 0.0
        truth = float(measured[i, j, cut:].sum())
        pred[j] += forecast
        actual[j] += truth
        err[j] += abs(forecast - truth)
    total = float(actual.sum())
    return {
        "holdout_days": holdout_days,
        "fitted_on_days": cut,
        "measured_on": measured_on,
        "measured_revenue": round(total, 2),
        "forecast": round(float(pred.sum()), 2),
        "wape": round(float(err.sum()) / total, 4) if total > 0 else None,
        "bias": round(float(pred.sum() - total) / total, 4) if total > 0 else None,
        "by_placement": {
            p: {
                "wape": round(float(err[j] / actual[j]), 4) if actual[j] > 0 else None,
                "bias": round(float((pred[j] - actual[j]) / actual[j]), 4) if actual[j] > 0 else None,
            }
            for p, j in p_idx.items()
        },
    }


def plan_from_files(
    directory: Path | str,
    req: Any,
    horizon_days: int = 28,
    holdout_days: int | None = None,
    cleanroom: Any = None,
    manufacturer: str | None = None,
) -> dict[str, Any]:
    """Plan from a brand's files (the full-data planner, ``req`` a :class:`PlanRequest`) and backtest its curves;
    a JSON-able answer: what was read, the plan with its spend analysis, the backtest. ``cleanroom``: an ``ask``
    (query -> answer) on a retailer's clean room as the brand (named ``manufacturer`` there, default the
    directory's name): the clean-room side beside it, backtested too, and a verdict on the two forecasts
    (:mod:`planning.files_compare`)."""
    data = load_brand_dir(directory, brand=manufacturer, horizon_days=horizon_days)
    body = files_plan(data, req, holdout_days, str(directory))
    if cleanroom is not None:
        import asyncio

        body = asyncio.run(with_cleanroom(body, data, cleanroom, req))
    return body


def files_plan(data: BrandData, req: Any, holdout_days: int | None, source: str) -> dict[str, Any]:
    """The full-data side of :func:`plan_from_files` for loaded ``data`` (``source``: where it was read)."""
    from planning.compare import allocation, plan_full

    days = data.spend.shape[2]
    plan, seconds = plan_full(data, req)
    return {
        "data": {
            "directory": source,
            "skus": len(data.facts.sku),
            "placements": data.placements,
            "history_days": days,
            "horizon_days": data.horizon_days,
        },
        "request": req.model_dump(),
        "plan": {
            "scenario": plan.scenario,
            "spend": round(plan.total_spend, 2),
            "predicted_iroas": round(plan.predicted_iroas, 4),
            "spend_analysis": plan.analysis,
            "shadow_prices": plan.shadow_prices,
            "allocation": [r for r in allocation(plan) if plan.spend[(r["sku"], r["placement"])] > 0.005],
            "seconds": round(seconds, 4),
        },
        "backtest": backtest(data, holdout_days or max(7, days // 4)),
        "evaluation": "real data has no ground truth: the curves are judged by forecasting held-out days of what "
        "the brand measured (lift tests where it has them, else attributed revenue, which over-states incremental "
        "revenue); the plan's profit is the planner's own forecast, with a bootstrap interval",
    }


async def with_cleanroom(body: dict[str, Any], data: BrandData, ask: Any, req: Any) -> dict[str, Any]:
    """``body`` (:func:`files_plan`'s) with the clean-room side through ``ask`` and the verdict on the two
    forecasts (:mod:`planning.files_compare`)."""
    from planning.files_compare import compare_files, verdict

    side = await compare_files(data, ask, req, body["backtest"]["holdout_days"], data.brand)
    return {**body, "cleanroom": side, "verdict": verdict(body["backtest"], side)}
