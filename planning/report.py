"""A comparison as a report people forward: one self-contained HTML page (inline SVG, no external assets) or a PDF
written here (PDF 1.4, the standard Helvetica fonts, vector charts; no dependency).

Contract: :func:`render` (``html`` | ``pdf`` -> (bytes, media type)), :func:`html` and :func:`pdf` take a
ComparisonResult as JSON (``planning.compare.ComparisonResult``
dumped) and show the same content in this order: the recommendation per side (its warning first, the 80 %
intervals where the side has them), the verdict (with a table per market when the
result was run over several seeds), the scores on the market's truth side by side, the
profit-vs-spend curve of each side with its chosen and profit-optimal spend marked, the top cells of each plan,
what data each side used (what its curves were fitted on — with its recommendation —, clean-room cells released
and withheld, k, blocked fields, epsilon spent), and the rationale and ad lines when the result has them. A plan
from a brand's own files (``rmn compare --data``, ``POST /v1/plans/files``) has no ground truth: its report shows
the holdout backtest of each side instead of scores (:func:`files_blocks`). Every number is the result's;
nothing is recomputed. :func:`blocks` is that content once; the two renderers only lay it out. A body that is not
a comparison result (a field missing or of the wrong kind) is a :class:`ReportError` naming it, never a crash.
"""

from __future__ import annotations

import html as _html
import zlib
from dataclasses import dataclass
from typing import Any

from planning.planner import PlanningError

MEDIA_TYPES = {"html": "text/html; charset=utf-8", "pdf": "application/pdf"}
SIDES = (("full", "full data", (0.18, 0.44, 0.87)), ("cleanroom", "clean room", (0.88, 0.54, 0.18)))


@dataclass
class Chart:
    """Profit-vs-spend curves: per side (name, colour, points, chosen spend, optimal spend)."""

    title: str
    series: list[tuple[str, tuple[float, float, float], list[tuple[float, float]], float, float | None]]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Block:
    """One piece of the report: ``kind`` is h1, h2, p, warn, table or chart."""

    kind: str
    text: str = ""
    table: Table | None = None
    chart: Chart | None = None


def _money(v: Any) -> str:
    return "-" if v is None else f"{float(v):,.2f}"


def recommendation(side: dict[str, Any], name: str) -> list[tuple[str, str]]:
    """What a planner reads first about one side, as (kind, text): its warning (``warn``: the warning itself), how
    much to spend and what it returns (``spend``), the plan's interval (``interval``) and what its curves were
    fitted on (``fitted``). The report, the CLI and the demo all print these lines."""
    a = side.get("spend_analysis") or {}
    out = [("warn", str(a["warning"]))] if a.get("warning") else []
    if a.get("knows_margins"):
        out.append((
            "spend",
            f"{name}: recommended spend {_money(a['plan_spend'])} (predicted profit {float(a['plan_profit']):+,.2f}, "
            f"marginal iROAS {float(a['marginal_roas']):.2f}); profit-optimal spend {_money(a['optimal_spend'])} "
            f"({float(a['optimal_profit']):+,.2f}), break-even spend {_money(a['break_even_spend'])}",
        ))  # fmt: skip
    elif a:
        out.append((
            "spend",
            f"{name}: spend {_money(a.get('plan_spend'))}, marginal iROAS {float(a['marginal_roas']):.2f}; without "
            "margins it cannot price a dollar",
        ))  # fmt: skip
    iv = a.get("intervals")
    if iv:
        p, r, inc = iv["profit"], iv["iroas"], iv["incremental_revenue"]
        out.append((
            "interval",
            f"{name}: {iv['level']:.0%} interval profit {p[0]:+,.2f} to {p[1]:+,.2f}, incremental revenue "
            f"{inc[0]:,.2f} to {inc[1]:,.2f}, iROAS {r[0]:.2f} to {r[1]:.2f}, chance of a loss "
            f"{iv['loss_probability']:.0%}",
        ))  # fmt: skip
    if a.get("fitted_on"):
        out.append(("fitted", f"{name}: curves fitted on {a['fitted_on']}"))
    return out


def blocks(result: dict[str, Any]) -> list[Block]:
    """The report's content (see the module contract); a plan from a brand's files: :func:`files_blocks`."""
    if "backtest" in result and "plan" in result and "market" not in result:
        return files_blocks(result)
    m, req = result["market"], result["request"]
    out = [
        Block("h1", f"Media plan: {m['manufacturer']} at {m['retailer']}"),
        Block(
            "p",
            f"Budget up to {_money(req['budget'])} over {m['horizon_days']} days, scenario "
            f"{req.get('scenario', 'fixed_budget')}; market seed {m['seed']}, {m['skus']} SKUs x "
            f"{len(m['placements'])} placements, {m['history_days']} days of history.",
        ),
        Block("h2", "Recommendation"),
    ]
    for key, name, _ in SIDES:
        out += [
            Block("warn", f"{name}: {text}") if kind == "warn" else Block("p", text)
            for kind, text in recommendation(result[key], name)
        ]
    out += [Block("h2", "Verdict"), Block("p", result["verdict"])]
    seeds = result.get("over_seeds")
    if seeds:
        d = seeds["full_minus_cleanroom"]
        rows = [[str(r["seed"]), _money(r["full"]), _money(r["cleanroom"]), f"{r['full'] - r['cleanroom']:+,.2f}"]
                for r in seeds["per_seed"]]  # fmt: skip
        span = "-" if d["low"] is None else f"{d['low']:+,.2f} to {d['high']:+,.2f}"
        rows.append(
            [f"mean ({seeds['full_wins']}/{seeds['markets']} won)", "", "", f"{d['mean']:+,.2f} ({span})"]
        )
        out += [
            Block("h2", f"Over {seeds['markets']} markets (true profit per plan)"),
            Block(
                "table", table=Table(["seed", "full data", "clean room", "difference (95 % interval)"], rows)
            ),
        ]
    f, c, d = result["full"]["score"], result["cleanroom"]["score"], result["deltas"]
    metrics = [
        ("spend", "spend"),
        ("incremental_revenue", "incremental revenue (true)"),
        ("iroas", "iROAS (true)"),
        ("profit", "profit (true)"),
        ("skus_covered", "SKUs covered"),
        ("forecast_wape", "forecast WAPE"),
        ("forecast_bias", "forecast bias"),
    ]
    rows = [[label, f"{f[k]:,.3f}".rstrip("0").rstrip("."), f"{c[k]:,.3f}".rstrip("0").rstrip("."),
             f"{d.get(k, 0):+,.3f}"] for k, label in metrics]  # fmt: skip
    out += [
        Block("h2", "Scores on the market's truth"),
        Block("table", table=Table(["metric", "full data", "clean room", "delta"], rows)),
    ]
    sides = [(name, colour, result[key]) for key, name, colour in SIDES]
    out += _curves_and_allocations(sides)
    out += [
        Block("h2", "Data used"),
        Block("table", table=Table(["", ""], _view_rows(result["cleanroom_view"]))),
    ]
    rationale = result.get("rationale")
    if rationale:
        text = rationale.get("dropped") or str(rationale.get("json"))
        out += [Block("h2", "Rationale (written through the composed adapters)"), Block("p", text)]
    lines = result.get("creatives") or []
    if lines:
        rows = [[str(x.get("sku")), str(x.get("text", "")).replace("\n", " "), str(x.get("decision", "ok" if x.get("ok") else "rejected"))] for x in lines]  # fmt: skip
        out += [
            Block("h2", "Ad lines and their governance verdict"),
            Block("table", table=Table(["sku", "line", "verdict"], rows)),
        ]
    return out


def _curves_and_allocations(
    sides: list[tuple[str, tuple[float, float, float], dict[str, Any]]],
) -> list[Block]:
    """Each side's profit-vs-spend curve in one chart, then its top cells; ``sides``: (name, colour, plan body
    with ``spend_analysis`` and ``allocation``)."""
    out: list[Block] = []
    series = []
    for name, colour, side in sides:
        a = side.get("spend_analysis") or {}
        if a.get("curve"):
            pts = [(float(x), float(y)) for x, y in a["curve"]]
            series.append((name, colour, pts, float(a["plan_spend"]), a.get("optimal_spend")))
    if series:
        out += [
            Block("h2", "Profit vs total spend (each side's own model)"),
            Block(
                "chart",
                chart=Chart("predicted net profit by total spend; dot: chosen, ring: optimal", series),
            ),
        ]
    for name, _, side in sides:
        cells = [r for r in side.get("allocation", []) if float(r.get("spend", 0)) > 0.005][:10]
        if cells:
            rows = [
                [str(r["sku"]), str(r["placement"]), _money(r["spend"]), _money(r.get("predicted_revenue"))]
                for r in cells
            ]
            out += [Block("h2", f"Allocation, {name} (top cells)"),
                    Block("table", table=Table(["sku", "placement", "spend", "predicted revenue"], rows))]  # fmt: skip
    return out


def _view_rows(v: dict[str, Any]) -> list[list[str]]:
    """What the clean-room side saw (a ``cleanroom_view``), as table rows."""
    return [
        [
            "clean-room cells released / withheld",
            f"{v.get('cells_released')} / "
            f"{'not reported' if v.get('cells_suppressed') is None else v['cells_suppressed']}",
        ],
        ["k (distinct shoppers per cell)", str(v.get("k"))],
        ["fields the policy blocked", ", ".join(v.get("blocked_fields") or []) or "none"],
        ["epsilon spent", str(v.get("epsilon_spent"))],
        [
            "brand's own margins and stock in the clean-room plan",
            "yes" if v.get("brand_margins_and_stock") else "no",
        ],
    ]


BACKTEST_ROWS = [
    ("fitted_on_days", "days fitted on"),
    ("holdout_days", "held-out days forecast"),
    ("measured_on", "measured on"),
    ("measured_revenue", "measured revenue"),
    ("forecast", "forecast"),
    ("wape", "forecast WAPE"),
    ("bias", "forecast bias"),
]


def files_blocks(result: dict[str, Any]) -> list[Block]:
    """The report of a plan from a brand's own files (``rmn compare --data``, ``POST /v1/plans/files``): the
    recommendation per side, the verdict on the two forecasts, the holdout backtest side by side (no ground
    truth exists), the curves and allocations, what the clean room released, and how the plan is evaluated."""
    d, p, b, req = result["data"], result["plan"], result["backtest"], result["request"]
    side = result.get("cleanroom")
    out = [
        Block("h1", f"Media plan from {d['directory']}"),
        Block(
            "p",
            f"Budget up to {_money(req['budget'])} over {d['horizon_days']} days, scenario "
            f"{req.get('scenario', 'profit_optimal')}; {d['skus']} SKUs x {len(d['placements'])} placements, "
            f"{d['history_days']} days of the brand's own history.",
        ),
        Block("h2", "Recommendation"),
    ]
    sides = [("your data", SIDES[0][2], p)]
    clean_plan = (side or {}).get("plan") or {}
    if "spend_analysis" in clean_plan:
        sides.append(("clean room", SIDES[1][2], clean_plan))
    for name, _, body in sides:
        out += [
            Block("warn", f"{name}: {text}") if kind == "warn" else Block("p", text)
            for kind, text in recommendation(body, name)
        ]
    if "error" in clean_plan:
        out.append(Block("warn", f"clean room: {clean_plan['error']}"))
    if result.get("verdict"):
        out += [Block("h2", "Verdict"), Block("p", str(result["verdict"]))]
    clean_bt = (side or {}).get("backtest") or {}
    header = ["", "your data"] + (["clean room"] if side is not None else [])
    rows = []
    for key, label in BACKTEST_ROWS:
        row = [label, _cell(b.get(key))]
        if side is not None:
            row.append(_cell(clean_bt.get(key)) if "refused" not in clean_bt else "refused")
        rows.append(row)
    out += [Block("h2", "Backtest on held-out days"), Block("table", table=Table(header, rows))]
    if result.get("evaluation"):
        out.append(Block("p", str(result["evaluation"])))
    out += _curves_and_allocations(sides)
    if side is not None and side.get("view"):
        out += [Block("h2", "Data used"), Block("table", table=Table(["", ""], _view_rows(side["view"])))]
    elif side is not None and side.get("refused"):
        out += [
            Block("h2", "Data used"),
            Block("p", f"the clean room refused the brand's queries: {side['refused']}"),
        ]
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.2f}"
    return str(v)


class ReportError(PlanningError):
    """The body cannot be rendered as a report; the message says what is missing or wrong."""


def render(result: dict[str, Any], fmt: str) -> tuple[bytes, str]:
    """``result`` as a report in ``fmt`` (``html`` | ``pdf``): (content, media type)."""
    if fmt not in MEDIA_TYPES:
        raise ReportError(f"format must be one of {sorted(MEDIA_TYPES)}, got {fmt!r}")
    try:
        content = pdf(result) if fmt == "pdf" else html(result).encode()
    except KeyError as e:
        raise ReportError(f"not a comparison result: field {e.args[0]!r} is missing") from e
    except (TypeError, ValueError, IndexError, AttributeError) as e:
        raise ReportError(f"not a comparison result: {e}") from e
    return content, MEDIA_TYPES[fmt]


# ---- HTML ---------------------------------------------------------------------------------------------------
def _rgb(c: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(v * 255):02x}" for v in c)


def _scale(chart: Chart, w: float, h: float, pad: float) -> tuple[Any, Any, float, float, float, float]:
    xs = [x for s in chart.series for x, _ in s[2]] + [s[3] for s in chart.series]
    ys = [y for s in chart.series for _, y in s[2]] + [0.0]
    x0, x1, y0, y1 = 0.0, max(max(xs), 1.0), min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y1 = y0 + 1.0
    return (
        lambda x: pad + (x - x0) / (x1 - x0) * (w - 2 * pad),
        lambda y: h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad),
        x0, x1, y0, y1,
    )  # fmt: skip


def _nearest(points: list[tuple[float, float]], x: float) -> float:
    return min(points, key=lambda p: abs(p[0] - x))[1]


def _svg(chart: Chart, w: float = 640, h: float = 260, pad: float = 48) -> str:
    X, Y, x0, x1, y0, y1 = _scale(chart, w, h, pad)
    e = _html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{e(chart.title)}">'
    ]
    out.append(
        f'<line x1="{pad}" y1="{Y(0):.1f}" x2="{w - pad}" y2="{Y(0):.1f}" stroke="#999" stroke-dasharray="4 3"/>'
    )
    out.append(f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>')
    out.append(f'<text x="{pad}" y="{h - pad + 16}" font-size="11">{x0:,.0f}</text>')
    out.append(
        f'<text x="{w - pad}" y="{h - pad + 16}" font-size="11" text-anchor="end">{x1:,.0f} spend</text>'
    )
    out.append(f'<text x="{pad - 4}" y="{Y(y1) + 4:.1f}" font-size="11" text-anchor="end">{y1:,.0f}</text>')
    out.append(f'<text x="{pad - 4}" y="{Y(y0) + 4:.1f}" font-size="11" text-anchor="end">{y0:,.0f}</text>')
    for i, (name, colour, pts, chosen, optimal) in enumerate(chart.series):
        col = _rgb(colour)
        poly = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
        out.append(
            f'<polyline data-side="{e(name)}" points="{poly}" fill="none" stroke="{col}" stroke-width="2"/>'
        )
        if optimal is not None:
            out.append(
                f'<circle class="optimal" cx="{X(float(optimal)):.1f}" cy="{Y(_nearest(pts, float(optimal))):.1f}" r="5" fill="white" stroke="{col}" stroke-width="2"/>'
            )
        out.append(
            f'<circle class="chosen" cx="{X(chosen):.1f}" cy="{Y(_nearest(pts, chosen)):.1f}" r="4" fill="{col}"/>'
        )
        out.append(
            f'<text x="{w - pad}" y="{pad + 14 * i}" font-size="11" text-anchor="end" fill="{col}">{e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def html(result: dict[str, Any]) -> str:
    """The report as one HTML page (see the module contract)."""
    e = _html.escape
    body = []
    content = blocks(result)
    for b in content:
        if b.kind in ("h1", "h2", "p"):
            body.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "warn":
            body.append(f'<p class="warn">{e(b.text)}</p>')
        elif b.table is not None:
            head = "".join(f"<th>{e(h)}</th>" for h in b.table.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.table.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.chart is not None:
            body.append(f"<figure>{_svg(b.chart)}<figcaption>{e(b.chart.title)}</figcaption></figure>")
    title = e(content[0].text)
    style = (
        "body{font:14px/1.45 system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        ".warn{color:#b00020;font-weight:600}figure{margin:0}figcaption{font-size:12px;color:#555}"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style>'
        f"</head><body>{''.join(body)}</body></html>"
    )


# ---- PDF ----------------------------------------------------------------------------------------------------
PAGE_W, PAGE_H, MARGIN = 595.0, 842.0, 50.0  # A4 in points
_PLAIN = str.maketrans({"—": "-", "–": "-", "’": "'", "‘": "'", "“": '"', "”": '"', "…": "...", "ε": "epsilon",
                        "≥": ">=", "≤": "<=", "→": "->", "·": "*", "≈": "~"})  # fmt: skip


def _pdf_text(s: str) -> str:
    s = s.translate(_PLAIN).encode("latin-1", "replace").decode("latin-1")
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _wrap(text: str, size: float, width: float) -> list[str]:
    """Lines of ``text`` that fit ``width`` points in Helvetica at ``size`` (0.53 em a character, a safe mean)."""
    per = max(int(width / (0.53 * size)), 10)
    lines, line = [], ""
    for word in text.split():
        while len(word) > per:  # a word longer than the line (a URL, a hash): cut it
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:per])
            word = word[per:]
        if len(line) + len(word) + (1 if line else 0) > per:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


class _Pages:
    """Content streams of A4 pages, filled top to bottom."""

    def __init__(self) -> None:
        self.pages: list[list[str]] = []
        self.y = 0.0
        self._new()

    def _new(self) -> None:
        self.pages.append([])
        self.y = PAGE_H - MARGIN

    def need(self, height: float) -> None:
        if self.y - height < MARGIN:
            self._new()

    def text(
        self,
        x: float,
        y: float,
        s: str,
        size: float = 10,
        bold: bool = False,
        rgb: tuple[float, ...] = (0, 0, 0),
    ) -> None:
        font = "F2" if bold else "F1"
        self.pages[-1].append(
            f"{rgb[0]:.3f} {rgb[1]:.3f} {rgb[2]:.3f} rg BT /{font} {size} Tf {x:.1f} {y:.1f} Td ({_pdf_text(s)}) Tj ET"
        )

    def line(
        self,
        pts: list[tuple[float, float]],
        rgb: tuple[float, ...] = (0, 0, 0),
        width: float = 1,
        dash: bool = False,
    ) -> None:
        path = " ".join(f"{x:.1f} {y:.1f} {'m' if i == 0 else 'l'}" for i, (x, y) in enumerate(pts))
        d = "[3 2] 0 d" if dash else "[] 0 d"
        self.pages[-1].append(f"{rgb[0]:.3f} {rgb[1]:.3f} {rgb[2]:.3f} RG {width} w {d} {path} S")

    def dot(self, x: float, y: float, r: float, rgb: tuple[float, ...], filled: bool) -> None:
        k = 0.5523 * r  # four Bezier quarter circles
        c = (f"{x + r:.1f} {y:.1f} m {x + r:.1f} {y + k:.1f} {x + k:.1f} {y + r:.1f} {x:.1f} {y + r:.1f} c "
             f"{x - k:.1f} {y + r:.1f} {x - r:.1f} {y + k:.1f} {x - r:.1f} {y:.1f} c "
             f"{x - r:.1f} {y - k:.1f} {x - k:.1f} {y - r:.1f} {x:.1f} {y - r:.1f} c "
             f"{x + k:.1f} {y - r:.1f} {x + r:.1f} {y - k:.1f} {x + r:.1f} {y:.1f} c")  # fmt: skip
        col = f"{rgb[0]:.3f} {rgb[1]:.3f} {rgb[2]:.3f}"
        self.pages[-1].append(f"{col} rg {col} RG 1.5 w [] 0 d {c} {'f' if filled else 'S'}")


CHART_H = 220.0  # points a chart takes on the page (plus its caption)


def _first_height(block: Block | None) -> float:
    """Points the start of ``block`` needs: a heading is kept on the page of what follows it."""
    if block is None:
        return 0.0
    if block.chart is not None:
        return CHART_H + 20
    return 2 * 12.5 if block.table is not None else 14.0


def _pdf_chart(pages: _Pages, chart: Chart) -> None:
    w, h, pad = PAGE_W - 2 * MARGIN, CHART_H, 40.0
    pages.need(h + 20)
    top = pages.y
    X0, Y0, x0, x1, y0, y1 = _scale(chart, w, h, pad)

    def X(x: float) -> float:
        return float(MARGIN + X0(x))

    def Y(y: float) -> float:
        return float(top - Y0(y))

    pages.line([(MARGIN + pad, Y(0)), (MARGIN + w - pad, Y(0))], (0.6, 0.6, 0.6), 0.8, dash=True)
    pages.line([(MARGIN + pad, top - pad), (MARGIN + pad, top - h + pad)], (0.2, 0.2, 0.2))
    pages.text(MARGIN + pad, top - h + pad - 14, f"{x0:,.0f}", 8)
    pages.text(MARGIN + w - pad - 60, top - h + pad - 14, f"{x1:,.0f} spend", 8)
    pages.text(MARGIN, Y(y1) - 3, f"{y1:,.0f}", 8)
    pages.text(MARGIN, Y(y0) - 3, f"{y0:,.0f}", 8)
    for i, (name, colour, pts, chosen, optimal) in enumerate(chart.series):
        pages.line([(X(x), Y(y)) for x, y in pts], colour, 2)
        if optimal is not None:
            pages.dot(X(float(optimal)), Y(_nearest(pts, float(optimal))), 5, colour, filled=False)
        pages.dot(X(chosen), Y(_nearest(pts, chosen)), 3.5, colour, filled=True)
        pages.text(MARGIN + w - pad - 60, top - pad - 12 * i, name, 9, rgb=colour)
    pages.y = top - h
    pages.text(MARGIN, pages.y, chart.title, 8, rgb=(0.35, 0.35, 0.35))
    pages.y -= 16


def _pdf_table(pages: _Pages, table: Table, size: float = 8.5) -> None:
    width = PAGE_W - 2 * MARGIN
    cols = len(table.header)
    longest = [max([len(table.header[j])] + [len(r[j]) for r in table.rows]) + 2 for j in range(cols)]
    share = [min(n, 70) for n in longest]
    xs = [MARGIN]
    for n in share[:-1]:
        xs.append(xs[-1] + width * n / sum(share))
    limits = [int((width * n / sum(share)) / (0.53 * size)) for n in share]
    for r, row in enumerate([table.header, *table.rows]):
        pages.need(size + 4)
        for j, cell in enumerate(row):
            cut = cell if len(cell) <= limits[j] else cell[: max(limits[j] - 3, 1)] + "..."
            pages.text(xs[j], pages.y, cut, size, bold=r == 0 and any(table.header))
        pages.y -= size + 4
    pages.y -= 6


def pdf(result: dict[str, Any]) -> bytes:
    """The report as PDF bytes (see the module contract)."""
    pages = _Pages()
    width = PAGE_W - 2 * MARGIN
    content = blocks(result)
    for n, b in enumerate(content):
        if b.kind in ("h1", "h2"):
            size = 16 if b.kind == "h1" else 12
            pages.need(size + 14 + _first_height(content[n + 1] if n + 1 < len(content) else None))
            pages.y -= 6 if b.kind == "h2" else 0
            pages.text(MARGIN, pages.y, b.text, size, bold=True)
            pages.y -= size + 6
        elif b.kind in ("p", "warn"):
            rgb = (0.69, 0.0, 0.13) if b.kind == "warn" else (0.0, 0.0, 0.0)
            for line in _wrap(b.text, 10, width):
                pages.need(14)
                pages.text(MARGIN, pages.y, line, 10, bold=b.kind == "warn", rgb=rgb)
                pages.y -= 13
            pages.y -= 4
        elif b.table is not None:
            _pdf_table(pages, b.table)
        elif b.chart is not None:
            _pdf_chart(pages, b.chart)
    return _assemble([("\n".join(p)).encode("latin-1") for p in pages.pages])


def _assemble(contents: list[bytes]) -> bytes:
    """A PDF file of one page per content stream (Flate-compressed), Helvetica and Helvetica-Bold as F1, F2."""
    n = len(contents)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{5 + 2 * i} 0 R".encode() for i in range(n))
        + f"] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
    ]
    for i, content in enumerate(contents):
        page = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W:.0f} {PAGE_H:.0f}] "
            f"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {6 + 2 * i} 0 R >>"
        )
        data = zlib.compress(content)
        objects += [
            page.encode(),
            f"<< /Length {len(data)} /Filter /FlateDecode >>\nstream\n".encode() + data + b"\nendstream",
        ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for k, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{k} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)
