"""`rmn compare --data`: a brand's own files (CSV or Parquet) → the same plan as from the market's tables,
a holdout backtest, and clear errors naming the file and the row."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium  # the test extra: PDFium reads the report back
import pytest

from planning.brand_files import BrandDataError, backtest, load_brand_dir, write_example
from planning.compare import plan_full
from planning.market import MarketConfig, generate
from planning.planner import PlanRequest
from serving.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "brand-data"


def test_the_shipped_example_is_the_markets_brand_and_plans_the_same(tmp_path: Path) -> None:
    market = generate(MarketConfig(seed=7))
    fresh = write_example(market, "brewmax", tmp_path / "fresh")
    for name in ("products.csv", "sales.csv", "media.csv"):  # the shipped files are what the market writes
        assert (fresh / name).read_text() == (EXAMPLE / name).read_text(), name
    assert "SYNTHETIC" in (EXAMPLE / "README.md").read_text()
    data, direct = load_brand_dir(EXAMPLE), market.brand_data("brewmax")
    order = [data.placements.index(p) for p in direct.placements]  # files list placements alphabetically
    np.testing.assert_allclose(data.spend[:, order], direct.spend)
    np.testing.assert_allclose(data.attributed[:, order], direct.attributed, atol=0.005)
    assert data.lift is not None and direct.lift is not None  # the lift tests' column is read
    np.testing.assert_allclose(data.lift[:, order], direct.lift, atol=0.005)
    np.testing.assert_array_equal(data.units, direct.units)
    np.testing.assert_array_equal(data.facts.promo, direct.facts.promo)
    req = PlanRequest(budget=1000)
    from_files, from_market = plan_full(data, req)[0], plan_full(direct, req)[0]
    assert from_files.total_spend == pytest.approx(from_market.total_spend, rel=1e-3)
    for key, spend in from_market.spend.items():
        assert from_files.spend[key] == pytest.approx(spend, abs=0.5)


def test_backtest_forecasts_held_out_days() -> None:
    data = load_brand_dir(EXAMPLE)
    b = backtest(data, 14)
    assert (
        b["fitted_on_days"] == 42
        and b["measured_revenue"] > 0
        and b["measured_on"].startswith("incremental")
        and 0 < b["wape"] < 1
    )
    assert set(b["by_placement"]) == set(data.placements)
    with pytest.raises(BrandDataError, match="holdout_days must be between 1 and 42"):
        backtest(data, 50)


def test_rmn_compare_data_prints_the_recommendation_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--data", str(EXAMPLE), "--budget", "1000"]) == 0
    out = capsys.readouterr().out
    assert "profit-optimal spend" in out and "backtest:" in out and "BRE-0001" in out
    assert "80% interval profit" in out and "fitted on incremental revenue (lift tests)" in out
    assert (
        main(["compare", "--data", str(EXAMPLE), "--budget", "5000", "--scenario", "fixed_budget", "--json"])
        == 0
    )
    body = json.loads(capsys.readouterr().out)
    assert body["plan"]["spend"] == pytest.approx(5000)
    assert body["plan"]["spend_analysis"]["warning"].startswith(
        "expected to LOSE"
    )  # said first when it loses
    assert body["backtest"]["holdout_days"] == 14 and "no ground truth" in body["evaluation"]


def test_parquet_files_read_the_same(tmp_path: Path) -> None:
    import duckdb

    con = duckdb.connect()
    for name in ("products", "sales", "media"):
        con.execute(
            f"COPY (SELECT * FROM read_csv_auto(?, all_varchar=true)) TO '{tmp_path / name}.parquet' (FORMAT parquet)",
            [str(EXAMPLE / f"{name}.csv")],
        )
    con.close()
    a, b = load_brand_dir(EXAMPLE), load_brand_dir(tmp_path)
    np.testing.assert_array_equal(a.spend, b.spend)
    np.testing.assert_array_equal(a.units, b.units)


def _edit(tmp_path: Path, file: str, row: int, column: str, value: str) -> Path:
    """A copy of the example with one cell of ``file``'s data row ``row`` (1-based) replaced."""
    out = tmp_path / "data"
    shutil.copytree(EXAMPLE, out)
    with (out / file).open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[row - 1][column] = value
    with (out / file).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


@pytest.mark.parametrize(
    ("file", "row", "column", "value", "needle"),
    [
        ("media.csv", 5, "spend", "-3", "media.csv row 5: spend must be >= 0, got '-3'"),
        ("media.csv", 7, "spend", "lots", "media.csv row 7: spend is not a number ('lots')"),
        ("media.csv", 2, "sku", "NOPE-1", "media.csv row 2: sku 'NOPE-1' is not in products"),
        ("sales.csv", 9, "date", "2026-13-01", "sales.csv row 9: date is not YYYY-MM-DD ('2026-13-01')"),
        ("sales.csv", 3, "units", "nan", "sales.csv row 3: units must be >= 0, got 'nan'"),
        (
            "sales.csv",
            2,
            "date",
            "2026-01-05",
            "sales.csv row 2: BRE-0000 on 2026-01-05 again (first at row 1)",
        ),
        ("products.csv", 4, "margin", "1.7", "products.csv row 4: margin must be between 0 and 1, got '1.7'"),
        ("products.csv", 2, "sku", "BRE-0000", "products.csv row 2: sku 'BRE-0000' again (first at row 1)"),
        ("products.csv", 6, "category", "  ", "products.csv row 6: category is blank"),
    ],
)
def test_a_bad_row_is_named_and_nothing_is_planned(
    tmp_path: Path,
    file: str,
    row: int,
    column: str,
    value: str,
    needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = _edit(tmp_path, file, row, column, value)
    with pytest.raises(BrandDataError) as e:
        load_brand_dir(bad)
    assert needle in str(e.value)
    assert main(["compare", "--data", str(bad), "--budget", "1000"]) == 1  # the CLI: a message, exit 1
    assert needle in capsys.readouterr().err


def test_missing_files_and_columns_are_named(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "d")
    (tmp_path / "d" / "media.csv").unlink()
    with pytest.raises(BrandDataError, match=r"no media\.csv or media\.parquet"):
        load_brand_dir(tmp_path / "d")
    (tmp_path / "d" / "media.csv").write_text("date,sku,spend\n2026-01-05,BRE-0000,3\n")
    with pytest.raises(
        BrandDataError, match=r"media.csv: missing columns \['placement', 'attributed_revenue'\]"
    ):
        load_brand_dir(tmp_path / "d")


def test_rmn_compare_data_with_a_retailers_clean_room_plans_both_sides_and_backtests_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped example (brewmax of market seed 7) against the demo config's acme clean room holding that
    market's retailer log (DP, k = 100), opened in-process: a clean-room plan with the brand's own margins, both
    sides backtested on the last 14 days of what the brand measured, a verdict from the two forecast errors, the
    epsilon the room charged. A repeated run is answered from the room's stored answers (no new epsilon)."""
    from serving.demo.defaults import demo_config
    from serving.demo.run import ensure_demo_cleanroom

    monkeypatch.setenv("RMN_HOME", str(tmp_path))
    ensure_demo_cleanroom(demo_config())
    capsys.readouterr()
    argv = ["compare", "--data", str(EXAMPLE), "--manufacturer", "brewmax", "--cleanroom", "acme"]
    assert main([*argv, "--budget", "1000", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    side = body["cleanroom"]
    assert side["manufacturer"] == "brewmax" and side["view"]["brand_margins_and_stock"] is True
    assert side["view"]["cells_released"] > 0 and set(side["view"]["blocked_fields"]) >= {
        "margin",
        "stock_level",
    }
    assert side["view"]["epsilon_spent"] == pytest.approx(
        2.0
    )  # totals over the history + over the fitted days
    cb, fb = side["backtest"], body["backtest"]
    assert cb["holdout_days"] == fb["holdout_days"] == 14 and cb["fitted_on_days"] == 42
    assert cb["measured_on"] == fb["measured_on"] and 0 < cb["cells_forecast"] <= cb["cells"]
    assert f"WAPE {fb['wape']:.3f}" in body["verdict"] and f"WAPE {cb['wape']:.3f}" in body["verdict"]
    assert "no ground truth" in body["verdict"]
    report = tmp_path / "plan.pdf"
    # the same queries: stored answers, the same plan; written as a report too
    assert main([*argv, "--budget", "1000", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "clean room:" in out and "verdict: on the last 14 days" in out
    doc = pdfium.PdfDocument(report.read_bytes())
    text = " ".join(" ".join(doc[i].get_textpage().get_text_range().split()) for i in range(len(doc)))
    doc.close()
    assert (
        "Media plan from" in text and "Backtest on held-out days" in text and "Profit vs total spend" in text
    )
    assert f"recommended spend {body['plan']['spend_analysis']['plan_spend']:,.2f}" in text
    assert " ".join(body["verdict"].split())[:60] in text and "epsilon spent" in text
    assert f"{fb['wape']:.4f}".rstrip("0") in text and f"{cb['wape']:.4f}".rstrip("0") in text
    ledger = (tmp_path / "acme.epsilon.jsonl").read_text().splitlines()
    assert len(ledger) == 2, ledger  # the repeat spent nothing


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--cleanroom", "nosuch"], "no such clean room (has: ['acme'])"),
        (["--cleanroom", "acme", "--url", "http://127.0.0.1:1"], "cannot reach"),
    ],
)
def test_rmn_compare_data_clean_room_errors(
    extra: list[str],
    needle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from serving.demo.defaults import demo_config
    from serving.demo.run import ensure_demo_cleanroom

    monkeypatch.setenv("RMN_HOME", str(tmp_path))
    ensure_demo_cleanroom(demo_config())
    assert (
        main(["compare", "--data", str(EXAMPLE), "--manufacturer", "brewmax", "--budget", "500", *extra]) == 1
    )
    assert needle in capsys.readouterr().err
    assert main(["compare", "--manufacturer", "brewmax", "--budget", "500", "--cleanroom", "acme"]) == 1
    assert "--cleanroom goes with --data" in capsys.readouterr().err


def test_a_clean_room_refusal_of_the_brands_totals_is_that_sides_answer_and_a_denial_fails() -> None:
    """compare_files: a policy refusal (e.g. differencing) of the first query is said as the side's answer and in
    the verdict; an access denial (the brand is not the caller's) is the request's failure."""
    import asyncio

    from cleanroom.errors import AccessDenied, PolicyViolation
    from planning.brand_files import files_plan
    from planning.files_compare import compare_files, verdict
    from planning.workflow import ComparisonError

    data = load_brand_dir(EXAMPLE, brand="brewmax")
    req = PlanRequest(budget=1000)

    def refusing(exc: Exception):  # type: ignore[no-untyped-def]
        async def ask(q: dict) -> dict:  # type: ignore[type-arg]
            raise ComparisonError(str(exc), exc)

        return ask

    side = asyncio.run(compare_files(data, refusing(PolicyViolation("refused: differencing")), req, 14))
    assert side["refused"] == "refused: differencing" and side["plan"] is None
    body = files_plan(data, req, 14, "x")
    assert verdict(body["backtest"], side).startswith(
        "the clean room refused the brand's queries (refused: differencing)"
    )
    with pytest.raises(ComparisonError, match="not yours"):
        asyncio.run(compare_files(data, refusing(AccessDenied("not yours")), req, 14))
