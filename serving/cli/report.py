"""Plain-text rendering of a ComparisonResult (``rmn compare`` and ``make demo``)."""

from __future__ import annotations

import json
from typing import Any

ROWS = [
    ("spend", "spend ($)", "{:,.2f}"),
    ("incremental_revenue", "incremental revenue ($, true)", "{:,.2f}"),
    ("iroas", "iROAS (true)", "{:.3f}"),
    ("profit", "profit ($, true)", "{:,.2f}"),
    ("skus_covered", "SKUs covered", "{:d}"),
    ("forecast_wape", "forecast WAPE", "{:.3f}"),
    ("forecast_bias", "forecast bias", "{:+.3f}"),
    ("spend_out_of_stock", "spend on out-of-stock SKUs ($)", "{:,.2f}"),
]


def _fmt(spec: str, value: Any) -> str:
    return spec.format(int(value)) if spec == "{:d}" else spec.format(value)


def recommendation(side: dict[str, Any], name: str) -> list[str]:
    """What a planner reads first about one side (planning.report.recommendation), its warning in capitals."""
    from planning.report import recommendation as lines

    return [f"WARNING ({name}): {text}" if kind == "warn" else text for kind, text in lines(side, name)]


def format_comparison(body: dict[str, Any]) -> str:
    """The recommendation and warnings first, then the side-by-side table, the verdict, what the clean room
    withheld, timings and the written text."""
    m, f, c, d = body["market"], body["full"]["score"], body["cleanroom"]["score"], body["deltas"]
    req = body["request"]
    lines = [
        f"{m['manufacturer']} at {m['retailer']} — market seed {m['seed']}, {m['skus']} SKUs x "
        f"{len(m['placements'])} placements, {m['history_days']} days of history, plan for {m['horizon_days']} days, "
        f"scenario {req.get('scenario', 'fixed_budget')}, budget {req['budget']:,.2f}",
        "",
        *recommendation(body["full"], "full data"),
        *recommendation(body["cleanroom"], "clean room"),
        "",
        f"{'metric':32s}{'full data':>14s}{'clean room':>14s}{'delta':>14s}",
    ]
    for key, label, spec in ROWS:
        lines.append(f"{label:32s}{_fmt(spec, f[key]):>14s}{_fmt(spec, c[key]):>14s}{d[key]:>14,.3f}")
    lines.append(
        f"{'predicted iROAS (own model)':32s}{body['full']['predicted_iroas']:>14.3f}"
        f"{body['cleanroom']['predicted_iroas']:>14.3f}"
    )
    v, t = body["cleanroom_view"], body["timing"]
    lines += [
        "",
        f"verdict: {body['verdict']}",
        f"clean room: {v['cells_released']} SKU x placement cells released"
        + (
            f", {v['cells_suppressed']} suppressed"
            if v["cells_suppressed"] is not None
            else " (on a noisy count of distinct shoppers)"
        )
        + f" (k={v['k']}), blocked fields: {', '.join(v['blocked_fields']) or 'none'}"
        + (f", epsilon spent {v['epsilon_spent']}" if v.get("noisy") else ""),
        f"harmonized: {len(body['harmonization']['mapping'])} retailer fields mapped, unmapped: "
        f"{', '.join(body['harmonization']['unmapped']) or 'none'}",
        f"shadow prices (full plan): budget {body['full']['shadow_prices'].get('budget')}, "
        f"ROAS floor {body['full']['shadow_prices'].get('roas_floor')}, "
        f"{body['full']['shadow_prices'].get('stock_binding_skus', 0)} SKUs stock-bound",
        f"sides planned {'in parallel' if req.get('parallel', True) else 'one after the other'}: wall "
        f"{t['wall_s']:.3f}s (full data {t['full_s']:.3f}s, clean room {t['cleanroom_s']:.3f}s; "
        "bench/planning.py measures parallel against sequential)",
    ]
    r = body.get("rationale")
    if r:
        if "dropped" in r:
            text = f"dropped: {r['dropped']}"
        else:
            text = json.dumps(r["json"]) if "json" in r else f"not written: {r.get('error')}"
        lines.append(f"rationale ({r.get('model', '?')}): {text}")
    for cr in body.get("creatives") or []:
        if "error" in cr:
            lines.append(f"creative {cr['sku']}: not written: {cr['error']}")
        else:
            decision = cr.get("decision") or ("ok" if cr["ok"] else "rejected")
            verdict = "OK" if cr["ok"] else f"{decision.upper()} (" + "; ".join(cr["violations"]) + ")"
            if cr.get("review_id"):
                verdict += f" review {cr['review_id']}"
            lines.append(f"creative {cr['sku']}: {cr['text']!r} -> {verdict}")
    return "\n".join(lines)


def format_files_plan(body: dict[str, Any]) -> str:
    """``rmn compare --data``: the recommendation first, the allocation, then the backtest."""
    d, p, b = body["data"], body["plan"], body["backtest"]
    lines = [
        f"{d['directory']}: {d['skus']} SKUs x {len(d['placements'])} placements, {d['history_days']} days of "
        f"history, plan for {d['horizon_days']} days, scenario {p['scenario']}, budget {body['request']['budget']:,.2f}",
        "",
        *recommendation({"spend_analysis": p["spend_analysis"]}, "your data"),
        "",
        f"{'sku':20s}{'placement':24s}{'spend':>12s}{'predicted revenue':>20s}",
    ]
    lines += [
        f"{a['sku']:20s}{a['placement']:24s}{a['spend']:>12,.2f}{a['predicted_revenue']:>20,.2f}"
        for a in p["allocation"][:10]
    ]
    lines += [
        "",
        f"backtest: curves fitted on the first {b['fitted_on_days']} days forecast the last {b['holdout_days']} days' "
        f"{b['measured_on']} at WAPE {b['wape']} (bias {b['bias']:+}); this bounds the forecast's error, it does not "
        "prove the plan",
    ]
    side = body.get("cleanroom")
    if side is not None and "refused" in side:
        lines += ["", f"verdict: {body['verdict']}"]
    elif side is not None:
        v = side["view"]
        lines += [
            "",
            *(
                recommendation({"spend_analysis": side["plan"]["spend_analysis"]}, "clean room")
                if "spend_analysis" in side["plan"]
                else [side["plan"]["error"]]
            ),
            f"clean room: {v['cells_released']} SKU x placement cells released (k={v['k']}), blocked fields: "
            f"{', '.join(v['blocked_fields']) or 'none'}, epsilon spent {v['epsilon_spent']}",
            f"verdict: {body['verdict']}",
        ]
    return "\n".join(lines)
