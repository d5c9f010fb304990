"""A brand's own files against a real retailer's clean room: both planners, judged by a holdout backtest.

Contract of :func:`compare_files`: the full-data plan from the brand's files (:func:`planning.brand_files.
plan_from_files`) and, beside it, the clean-room plan from what the retailer's room releases to the brand over the
same dates (the queries of :func:`planning.compare.cleanroom_queries`, through ``ask`` — the API or a room opened
in-process — with the brand's own margins and stock, as in the synthetic comparison). Real data has no ground truth,
so each side is judged by forecasting the last ``holdout_days`` of what the brand measured (lift tests'
incremental revenue where its files have them, else attributed revenue) from its own daily spend there: the
full-data curves fitted on the days before, the clean-room curves from the room's answers over the days before
(asked again, date-bounded; a refusal is reported, not fatal). Both backtests cover every cell the brand spent on
in the held-out days (a cell the room did not release is forecast 0: the clean-room planner does not know it). The
verdict compares the two forecast errors; plans are never scored as if a truth existed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from planning.market import BrandData, carry


def window(ask: Any, first: dt.date, last: dt.date) -> Any:
    """``ask`` with every query bounded to ``first`` .. ``last`` (inclusive)."""

    async def bounded(q: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await ask({**q, "date_from": first.isoformat(), "date_to": last.isoformat()})
        return out

    return bounded


def cleanroom_backtest(answers: dict[str, dict[str, Any]], data: BrandData, cut: int) -> dict[str, Any]:
    """Forecast error of the clean-room curves fitted from ``answers`` (over the first ``cut`` days) on the
    brand's days from ``cut`` on, from its own daily spend (carried over with the room's carry-over)."""
    from planning.curves import fit_aggregates, response

    daily = (answers.get("daily") or {}).get("cells", [])
    curves, carryover = fit_aggregates(answers["cells"]["cells"], daily, cut)
    measured, measured_on = response(data)
    by_key = {(c.sku, c.placement): c for c in curves}
    n, P, _ = data.spend.shape
    cells = [(i, j) for i in range(n) for j in range(P) if data.spend[i, j].sum() > 0]  # spent on at all
    pred = actual = err = 0.0
    known = 0
    for i, j in cells:
        truth = float(measured[i, j, cut:].sum())
        c = by_key.get((data.facts.sku[i], data.placements[j]))
        forecast = 0.0
        if c is not None and c.a > 0:
            known += 1
            x = carry(data.spend[i, j], carryover.get(c.placement, 0.0))[cut:]
            forecast = float((c.a * (1 - np.exp(-x / max(c.s, 1e-9)))).sum())
        pred, actual, err = pred + forecast, actual + truth, err + abs(forecast - truth)
    return {
        "holdout_days": data.spend.shape[2] - cut,
        "fitted_on_days": cut,
        "measured_on": measured_on,
        "measured_revenue": round(actual, 2),
        "forecast": round(pred, 2),
        "wape": round(err / actual, 4) if actual > 0 else None,
        "bias": round((pred - actual) / actual, 4) if actual > 0 else None,
        "cells_forecast": known,
        "cells": len(cells),
    }


async def compare_files(
    data: BrandData, ask: Any, req: Any, holdout_days: int, manufacturer: str | None = None
) -> dict[str, Any]:
    """The clean-room side of a brand-files plan (see the module contract): ``{"plan", "view", "backtest"}`` plus
    the caller adds the verdict (:func:`verdict`). A policy refusal of the brand's totals is this side's answer
    (``{"refused": reason}``), not a failure of the request. ``ask``: query -> answer
    (a :class:`planning.workflow.ComparisonError` for a refusal); ``req``: a :class:`PlanRequest`."""
    from planning.compare import allocation, cleanroom_view, plan_from_cleanroom
    from planning.planner import PlanningError
    from planning.workflow import ComparisonError, _refused_by_policy, cleanroom_answers

    if data.first_date is None:
        raise ValueError("brand data without dates cannot be matched with a clean room's days")
    brand = manufacturer or data.brand
    days = data.spend.shape[2]
    last = data.first_date + dt.timedelta(days=days - 1)
    try:
        answers = await cleanroom_answers(window(ask, data.first_date, last), brand)
    except ComparisonError as e:
        if not _refused_by_policy(e):
            raise
        # the room's policy refused the brand's totals (e.g. exact mode's differencing check against earlier
        # releases): that is the clean room's answer for this side, the full-data side stands
        return {"manufacturer": brand, "refused": str(e), "plan": None, "view": None, "backtest": None}
    if not answers["cells"]["cells"]:
        raise ComparisonError(
            f"the clean room released no cell of {brand!r} between {data.first_date} and {last} "
            "(is the brand named as in the retailer's data? --manufacturer)"
        )
    plan_body: dict[str, Any]
    try:
        plan, view, seconds = plan_from_cleanroom(answers, req, days, data.horizon_days, data)
        plan_body = {
            "scenario": plan.scenario,
            "spend": round(plan.total_spend, 2),
            "predicted_iroas": round(plan.predicted_iroas, 4),
            "spend_analysis": plan.analysis,
            "allocation": [r for r in allocation(plan) if plan.spend[(r["sku"], r["placement"])] > 0.005],
            "seconds": round(seconds, 4),
        }
    except PlanningError as e:  # e.g. no released cell is one of the brand's SKUs: said, not fatal
        view, plan_body = cleanroom_view(answers, True), {"error": f"clean-room plan: {e}"}
    cut = days - holdout_days
    try:
        early = await cleanroom_answers(
            window(ask, data.first_date, data.first_date + dt.timedelta(days=cut - 1)), brand
        )
        backtest: dict[str, Any] = cleanroom_backtest(early, data, cut)
        view["epsilon_spent"] = round(
            view["epsilon_spent"]
            + sum(a.get("epsilon_spent", 0.0) for a in early.values() if isinstance(a, dict)),
            6,
        )
    except ComparisonError as e:
        backtest = {"refused": str(e)}
    return {
        "manufacturer": brand,
        "plan": plan_body,
        "view": view,
        "backtest": backtest,
    }


def verdict(full: dict[str, Any], side: dict[str, Any]) -> str:
    """Which side's curves forecast the held-out days better (no truth: forecast error is the evidence);
    ``side``: :func:`compare_files`'s answer."""
    if "refused" in side:
        return f"the clean room refused the brand's queries ({side['refused']}): only the full-data plan is judged"
    clean = side["backtest"]
    fw, cw = full.get("wape"), clean.get("wape")
    if "refused" in clean:
        return f"the clean room refused the backtest's queries ({clean['refused']}): only the full-data forecast is judged"
    if fw is None or cw is None:
        return "nothing was measured in the held-out days: neither forecast can be judged"
    better = "full data" if fw < cw else "the clean room" if cw < fw else "neither"
    return (
        f"on the last {full['holdout_days']} days the full-data curves forecast {full['measured_on']} at WAPE "
        f"{fw:.3f} (bias {full['bias']:+.3f}), the clean room's at WAPE {cw:.3f} (bias {clean['bias']:+.3f}, "
        f"{clean['cells_forecast']} of {clean['cells']} cells known): {better} forecasts better; no ground truth "
        "exists here, so neither plan's profit is measured"
    )
