"""`rmn cleanroom load|query|audit` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.cli import main
from tests.cleanroom_data import write_events


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    policy = tmp_path / "acme-policy.yaml"
    policy.write_text(
        "retailer: acme\nk: 5\nmode: exact\ntrusted_tenants: [brand_x]\nunscoped_tenants: [brand_x]\n"
        "report_suppressed_cells: true\n"
    )
    return tmp_path / "acme.duckdb", policy, write_events(tmp_path / "events.csv", 5)


def query_argv(db: Path, policy: Path, query: str) -> list[str]:
    return [
        "cleanroom",
        "query",
        "--db",
        str(db),
        "--policy",
        str(policy),
        "--tenant",
        "brand_x",
        "--query",
        query,
        "--json",
    ]


def test_load_query_audit(files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    db, policy, events = files
    assert main(["cleanroom", "load", "--db", str(db), "--policy", str(policy), str(events)]) == 0
    assert "515 rows loaded as batch 1" in capsys.readouterr().out
    assert main(["cleanroom", "load", "--db", str(db), "--policy", str(policy), str(events)]) == 0
    assert "already loaded as batch 1" in capsys.readouterr().out  # the same file loads once
    q = json.dumps({"dimensions": ["sku"], "metrics": ["purchases"]})
    assert main(query_argv(db, policy, q)) == 0
    out = json.loads(capsys.readouterr().out)
    assert {c["sku"] for c in out["cells"]} == {"at_k", "above_k"} and out["suppressed_cells"] == 2
    bad = json.dumps(
        {"metrics": ["purchases"], "filters": [{"column": "shopper_id", "op": "eq", "value": "w"}]}
    )
    assert main(query_argv(db, policy, bad)) == 1
    assert "identity or blocked" in capsys.readouterr().err
    assert main(["cleanroom", "audit", "--db", str(db)]) == 0
    decisions = [json.loads(x)["decision"] for x in capsys.readouterr().out.splitlines()]
    assert decisions == ["accepted", "refused"]


def test_policy_errors_name_file_and_field(
    files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, policy, events = files
    policy.write_text("retailer: acme\nk: 1\nallowed_dimensions: [shopper_id]\n")
    assert main(["cleanroom", "load", "--db", str(db), "--policy", str(policy), str(events)]) == 1
    err = capsys.readouterr().err
    assert "acme-policy.yaml" in err and "k:" in err


def test_budget_verb(files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    db, policy, events = files
    policy.write_text(
        "retailer: acme\nk: 5\nunscoped_tenants: [brand_x]\n"
        "dp: {epsilon_per_query: 0.5, max_epsilon_per_query: 2, epsilon_budget: 3}\n"
    )
    argv = ["--db", str(db), "--policy", str(policy)]
    assert main(["cleanroom", "load", *argv, str(events)]) == 0
    assert main(query_argv(db, policy, json.dumps({"metrics": ["purchases"]}))) == 0
    capsys.readouterr()
    assert main(["cleanroom", "budget", *argv, "--tenant", "brand_x", "--json"]) == 0
    budget = json.loads(capsys.readouterr().out)
    assert budget["epsilon_spent"] == 0.5 and budget["epsilon_remaining"] == 2.5


def test_the_tenant_comes_from_the_policy_not_free_text(
    files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    db, policy, events = files
    assert main(["cleanroom", "load", "--db", str(db), "--policy", str(policy), str(events)]) == 0
    argv = query_argv(db, policy, json.dumps({"metrics": ["purchases"]}))
    argv[argv.index("brand_x")] = "someone_else"
    assert main(argv) == 1
    assert "not declared in" in capsys.readouterr().err
