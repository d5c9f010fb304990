"""`rmn compare` in-process (no Ray): the side-by-side table, JSON output, and clear errors."""

from __future__ import annotations

import json

import pytest

from serving.cli import main


def test_compare_prints_the_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "--budget", "800", "--manufacturer", "brewmax", "--seed", "4", "--roas-floor", "0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "full data" in out and "clean room" in out and "verdict:" in out and "blocked fields" in out
    assert "profit-optimal spend" in out and "break-even spend" in out
    assert main([*argv, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    a = body["full"]["spend_analysis"]
    assert body["market"]["seed"] == 4 and body["full"]["score"]["spend"] == pytest.approx(
        a["plan_spend"], abs=0.01
    )
    assert a["plan_spend"] <= 800 and a["plan_spend"] == pytest.approx(a["optimal_spend"])  # profit_optimal
    assert body["rationale"] is None  # no LLM text in-process
    assert main([*argv, "--scenario", "fixed_budget", "--json"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["full"]["score"]["spend"] == pytest.approx(800)  # spent in full
    if fixed["full"]["spend_analysis"]["plan_profit"] < 0:  # and, when that loses, said first
        assert fixed["full"]["spend_analysis"]["warning"].startswith("expected to LOSE")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--budget", "-5", "--manufacturer", "brewmax"], "greater than 0"),
        (["--budget", "500", "--manufacturer", "nobody"], "unknown manufacturer"),
        (
            [
                "--budget",
                "500",
                "--manufacturer",
                "brewmax",
                "--scenario",
                "fixed_budget",
                "--roas-floor",
                "80",
            ],
            "unreachable",
        ),
        (["--budget", "500", "--manufacturer", "brewmax", "--scenario", "target_roas"], "needs a target"),
        (["--budget", "500", "--manufacturer", "brewmax", "--url", "http://127.0.0.1:1"], "cannot reach"),
    ],
)
def test_compare_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *argv]) == 1
    assert needle in capsys.readouterr().err
