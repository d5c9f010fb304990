"""The six-role crew (examples/agents/crew.py, LangGraph over the OpenAI API) end to end on the tiny model:
forced tool calls, so the run is deterministic; every call parses and reaches the API with the tenant's key;
the final message carries the comparison's measured numbers; a refusal is reported, not a crash."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from examples.agents.crew import METRICS, Api, Crew
from tests.tenants import KEYS, auth

pytestmark = pytest.mark.slow


def crew(url: str, brand: str, key: str = KEYS["brand_x"], **kw: Any) -> Crew:
    # the test registry has task adapters for planning and creative only
    tasks = {"harmonizer": "planning"}
    return Crew(Api(url, key), brand, retailer="acme", budget=600.0, echo=lambda _: None, tasks=tasks, **kw)


def test_crew_runs_six_roles_and_reports_the_measured_comparison(serve_url: str) -> None:
    out = crew(serve_url, "brand_x").run()
    steps = {s["role"]: s for s in out["steps"]}
    assert list(steps) == ["harmonizer", "analyst", "planner", "creative", "governance", "measurement"]
    for s in steps.values():
        assert "error" not in s, s
        assert isinstance(s["args"], dict) and s["args"], s  # the tool call parsed into the tool's arguments
        assert s["model"].startswith("base:"), s  # answered by a composed stack, not the base model
    assert steps["planner"]["args"]["budget"] == 600.0
    # every API call carried the tenant's key and was answered
    assert [c["status"] for c in out["api_calls"]] == [200] * len(out["api_calls"])
    paths = {c["path"] for c in out["api_calls"]}
    assert {"/v1/harmonize", "/v1/cleanroom/query", "/v1/plans/compare", "/v1/governance/check"} <= paths

    # the numbers in the final message are the comparison's: the same request straight to the API agrees
    req = {
        "manufacturer": "brand_x",
        "retailer": "acme",
        "budget": 600.0,
        "exploration_share": steps["planner"]["args"]["exploration_share"],
        "write_text": False,
        "creatives": 3,
    }
    direct = httpx.post(
        f"{serve_url}/v1/plans/compare", json=req, headers=auth("brand_x"), timeout=120
    ).json()
    for k in METRICS:
        assert (
            f"{direct['full']['score'][k]:>14,.3f}{direct['cleanroom']['score'][k]:>14,.3f}" in out["final"]
        )
        assert f"{direct['deltas'][k]:>14,.3f}" in out["final"]
    assert direct["verdict"] in out["final"]
    lines = out["data"]["governance"]
    assert (
        len(lines) >= 1
        and f"ad lines approved: {sum(x['ok'] for x in lines)} of {len(lines)}" in out["final"]
    )


def test_a_tool_call_for_another_brand_gets_403_and_the_crew_reports_it(serve_url: str) -> None:
    """brand_x's key planning brand_y: the planner's call is refused by the API; the crew finishes and says so."""
    out = crew(serve_url, "brand_y").run()
    planner = next(s for s in out["steps"] if s["role"] == "planner")
    assert planner["error"].startswith("403:") and "only for its own brand" in planner["error"]
    assert "No comparison: 403:" in out["final"] and "refused at planner: 403" in out["final"]
    assert len(out["steps"]) == 6  # the other roles still ran
    assert 403 in [c["status"] for c in out["api_calls"]]


def test_a_key_without_rights_is_refused_at_the_first_model_call(serve_url: str) -> None:
    out = crew(serve_url, "brand_x", key="not-a-key").run()
    assert all(s["error"].startswith("401") for s in out["steps"]), out["steps"]
    assert "No comparison" in out["final"]
