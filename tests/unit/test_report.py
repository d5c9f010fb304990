"""The comparison report (planning/report.py): the PDF is rendered to PNG by PDFium (pypdfium2) and read back —
its text carries the result's numbers, the chart is drawn in both sides' colours — and the HTML page holds the
same content with an SVG chart; hostile text is escaped in both; ``rmn compare --report`` writes either."""

from __future__ import annotations

import copy
import json
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium  # the test extra: PDFium renders the pages
import pytest

from planning import report
from planning.compare import CompareRequest
from planning.workflow import compare_local
from serving.cli import main
from serving.demo.defaults import demo_config

BLUE, ORANGE = (47, 112, 222), (224, 138, 46)  # planning.report.SIDES at 0-255


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    cfg = demo_config()
    assert cfg.comparison is not None
    req = CompareRequest(budget=5000, manufacturer="brewmax", seed=7, scenario="fixed_budget")
    with tempfile.TemporaryDirectory() as work:
        return compare_local(cfg.comparison.market, req, cfg.market_policy(), Path(work))


def pages(data: bytes) -> list[tuple[str, np.ndarray]]:
    """(text, RGB pixels at 2x) of each page, through PDFium."""
    doc = pdfium.PdfDocument(data)
    try:
        out = []
        for i in range(len(doc)):
            page = doc[i]
            text = page.get_textpage().get_text_range()
            out.append((text, np.asarray(page.render(scale=2).to_pil().convert("RGB"))))
        return out
    finally:
        doc.close()


def near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(img.astype(int) - np.array(rgb)).max(axis=2) < tol).sum())


def test_the_pdf_renders_with_the_results_numbers_and_both_curves(result: dict[str, Any]) -> None:
    data = report.pdf(result)
    assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
    rendered = pages(data)
    text = " ".join(" ".join(t.split()) for t, _ in rendered)
    full = result["full"]["spend_analysis"]
    assert "Media plan: brewmax at acme" in text and "Recommendation" in text
    assert full["warning"] and " ".join(full["warning"].split())[:60] in text  # a losing plan says so first
    assert text.index(" ".join(full["warning"].split())[:40]) < text.index("Verdict")
    assert f"recommended spend {full['plan_spend']:,.2f}" in text
    lo, hi = full["intervals"]["profit"]
    assert f"profit {lo:+,.2f} to {hi:+,.2f}" in text  # the 80 % interval
    assert " ".join(result["verdict"].split())[:50] in text
    assert f"{result['full']['score']['profit']:,.2f}" in text and "epsilon spent" in text
    top = max(result["full"]["allocation"], key=lambda r: r["spend"])
    assert top["sku"] in text
    # the figure: both sides' curves are drawn (pixels in each side's colour), on the chart's page
    chart_page = next(img for t, img in rendered if "Profit vs total spend" in t)
    assert near(chart_page, BLUE) > 300 and near(chart_page, ORANGE) > 300
    assert all(img.shape[:2] == (1684, 1190) for _, img in rendered)  # A4 at 2x


def test_the_html_page_has_the_same_content_and_an_svg_chart(result: dict[str, Any]) -> None:
    page = report.html(result)

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[tuple[str, dict[str, str | None]]] = []
            self.text: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.append((tag, dict(attrs)))

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    p = Tags()
    p.feed(page)
    text = " ".join(p.text)
    lines = [a for t, a in p.tags if t == "polyline"]
    assert {a["data-side"] for a in lines} == {"full data", "clean room"}
    assert sum(1 for t, a in p.tags if t == "circle" and a.get("class") == "optimal") == 2
    assert not any(t in ("script", "link", "img") for t, _ in p.tags)  # self-contained: nothing fetched
    assert f"recommended spend {result['full']['spend_analysis']['plan_spend']:,.2f}" in text
    assert result["verdict"][:50] in text


def test_hostile_text_is_escaped_in_both(result: dict[str, Any]) -> None:
    evil = copy.deepcopy(result)
    evil["verdict"] = "<script>alert(1)</script> (a) \\ b — ε ≥ 1"
    page = report.html(evil)
    assert "<script>" not in page and "&lt;script&gt;" in page
    text = " ".join(t for t, _ in pages(report.pdf(evil)))
    assert "<script>alert(1)</script> (a) \\ b - epsilon >= 1" in " ".join(text.split())


def test_rmn_compare_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.pdf"
    args = ["compare", "--budget", "1000", "--manufacturer", "brewmax", "--seed", "7", "--json"]
    assert main([*args, "--report", str(out)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["full"]["spend_analysis"]["plan_spend"] > 0
    assert f"{body['full']['spend_analysis']['plan_spend']:,.2f}" in " ".join(
        t for t, _ in pages(out.read_bytes())
    )
    assert main([*args, "--report", str(tmp_path / "plan.docx")]) != 0
    assert "must end in .html or .pdf" in capsys.readouterr().err


def test_a_result_over_several_markets_shows_each_markets_profits_and_the_interval(
    result: dict[str, Any],
) -> None:
    from planning.compare import over_seeds

    several = copy.deepcopy(result)
    several["over_seeds"] = over_seeds(
        [{"seed": 7, "full": 120.5, "cleanroom": 80.25}, {"seed": 8, "full": 90.0, "cleanroom": 95.0}]
    )
    d = several["over_seeds"]["full_minus_cleanroom"]
    for text in (" ".join(t.split()) for t, _ in pages(report.pdf(several))), [report.html(several)]:
        joined = " ".join(text)
        assert "Over 2 markets" in joined and "+40.25" in joined and "-5.00" in joined
        assert f"{d['low']:+,.2f} to {d['high']:+,.2f}" in joined and "1/2 won" in joined
    assert "Over 2 markets" not in report.html(result)  # one market: no such table
