"""`POST /v1/plans/compare` on the Serve tier: real deployments (comparison → planner ×2 → clean room),
the FakeEngine writing the rationale and ad lines through composed adapters. The same check runs with
real vLLM (guided JSON) in tests/integration/test_compare_vllm.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.tenants import auth


def compare(url: str, body: dict, tenant: str = "brand_x") -> httpx.Response:
    return httpx.post(f"{url}/v1/plans/compare", json=body, headers=auth(tenant), timeout=120)


def test_compare_scores_both_plans_and_writes_through_the_adapters(serve_url: str) -> None:
    check_comparison(serve_url)


def check_comparison(serve_url: str) -> None:
    """A comparison's numbers hold together and its text was written through the composed stacks."""
    body = {
        "budget": 800,
        "scenario": "fixed_budget",
        "roas_floor": 0.2,
        "manufacturer": "brand_x",
        "creatives": 2,
    }
    r = compare(serve_url, body)
    assert r.status_code == 200, r.text
    body = r.json()
    for side in ("full", "cleanroom"):
        s = body[side]["score"]
        assert s["spend"] == pytest.approx(800, rel=1e-6) and s["skus_covered"] > 0
        assert body[side]["predicted_iroas"] >= 0.2 - 1e-9  # the floor holds in the planner's own model
    # same objective on both sides: the clean-room planner uses the brand's own margins and stock
    assert body["full"]["objective"] == "profit" and body["cleanroom"]["objective"] == "profit"
    assert body["cleanroom_view"]["brand_margins_and_stock"] is True
    for side in ("full", "cleanroom"):  # how much to spend, on each planner's own curves
        a = body[side]["spend_analysis"]
        assert a["knows_margins"] and a["optimal_spend"] <= a["break_even_spend"] <= 800 + 1e-6
        assert (a["warning"] is not None) == (a["plan_profit"] < 0)
    assert set(body["cleanroom_view"]["blocked_fields"]) == {"margin", "stock_level", "promo_flag"}
    assert body["harmonization"]["unmapped"] == ["store_region"] and not body["harmonization"]["missing"]
    assert body["deltas"]["profit"] == pytest.approx(
        body["full"]["score"]["profit"] - body["cleanroom"]["score"]["profit"], abs=0.02
    )
    profits = (body["full"]["score"]["profit"], body["cleanroom"]["score"]["profit"])
    if max(profits) <= 0:
        assert body["verdict"].startswith("no plan")
    else:
        assert ("full data wins" in body["verdict"]) == (body["deltas"]["profit"] > 0)
    # parallel fan-out: the two plans overlapped in time (wall clock below the sum of both sides)
    t = body["timing"]
    assert t["wall_s"] < t["sum_s"] and t["wall_s"] < max(t["full_s"], t["cleanroom_s"]) + 0.5 * min(
        t["full_s"], t["cleanroom_s"]
    )
    # text through the composed adapters: the planning stack (guided JSON) and the creative stack
    rationale = body["rationale"]
    favoured = (
        None
        if profits[0] == profits[1]
        else "full_data_plan"
        if profits[0] > profits[1]
        else "cleanroom_plan"
    )
    if "dropped" in rationale:  # a rationale contradicting the numbers is not shown, and the answer says so
        assert rationale["raw"]["recommendation"] != favoured and favoured in rationale["dropped"]
    else:
        assert rationale["schema_valid"] and rationale["json"]["recommendation"] in {
            "full_data_plan",
            "cleanroom_plan",
        }
        assert favoured is None or rationale["json"]["recommendation"] == favoured
    assert "task_planning" in body["models"]["rationale"] and "brand_x" in body["models"]["rationale"]
    assert len(body["creatives"]) == 2 and "task_creative" in body["models"]["creatives"]
    assert all(isinstance(c["ok"], bool) and "violations" in c for c in body["creatives"])


def test_seed_changes_every_number(serve_url: str) -> None:
    a = compare(serve_url, {"budget": 600, "manufacturer": "brand_x", "creatives": 0, "seed": 11}).json()
    b = compare(serve_url, {"budget": 600, "manufacturer": "brand_x", "creatives": 0, "seed": 12}).json()
    for side in ("full", "cleanroom"):
        for metric in ("incremental_revenue", "iroas", "profit", "forecast_wape"):
            assert a[side]["score"][metric] != b[side]["score"][metric], (side, metric)
    assert a["market"]["retailer_log_rows"] != b["market"]["retailer_log_rows"]


def test_the_comparison_as_a_report(serve_url: str) -> None:
    """``?format=pdf`` / ``html``: the same comparison as a report (its pages are checked as images in
    tests/unit/test_report.py); an unknown format is a 400 before any planning."""
    body = {"budget": 600, "manufacturer": "brand_x", "creatives": 0, "seed": 11}
    h = httpx.post(
        f"{serve_url}/v1/plans/compare?format=html", json=body, headers=auth("brand_x"), timeout=120
    )
    assert h.status_code == 200 and h.headers["content-type"].startswith("text/html"), h.text[:300]
    assert "Media plan: brand_x" in h.text and "<polyline" in h.text
    p = httpx.post(
        f"{serve_url}/v1/plans/compare?format=pdf", json=body, headers=auth("brand_x"), timeout=120
    )
    assert p.status_code == 200 and p.headers["content-type"] == "application/pdf"
    assert (
        p.content.startswith(b"%PDF-")
        and 'filename="rmn-plan-brand_x-11.pdf"' in p.headers["content-disposition"]
    )
    bad = httpx.post(
        f"{serve_url}/v1/plans/compare?format=docx", json=body, headers=auth("brand_x"), timeout=30
    )
    assert bad.status_code == 400 and "format must be one of" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "tenant", "status", "needle"),
    [
        ({"budget": -5, "manufacturer": "brand_x"}, "brand_x", 400, "budget"),
        (
            {"budget": 500, "manufacturer": "brand_x", "exploration_share": 1.5},
            "brand_x",
            400,
            "exploration_share",
        ),
        (
            {"budget": 500, "manufacturer": "brand_x", "scenario": "fixed_budget", "roas_floor": 90},
            "brand_x",
            400,
            "roas_floor 90 is unreachable",
        ),
        ({"budget": 500, "manufacturer": "brand_x", "budget_x": 1}, "brand_x", 400, "budget_x"),
        ({"budget": 500, "manufacturer": "brand_y"}, "brand_x", 403, "only for its own brand"),
        ({"budget": 500, "manufacturer": "nobody"}, "admin", 400, "unknown manufacturer"),
        (
            {"budget": 500, "manufacturer": "brand_x", "retailer": "bigmart"},
            "brand_x",
            400,
            "unknown retailer",
        ),
    ],
)
def test_bad_requests(serve_url: str, body: dict, tenant: str, status: int, needle: str) -> None:
    r = compare(serve_url, body, tenant)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_governance_check_gives_one_verdict_per_line(serve_url: str) -> None:
    lines = ["Fresh roast coffee, now on acme.com", "Guaranteed the best ever coffee!", "short"]
    r = httpx.post(
        f"{serve_url}/v1/governance/check", json={"lines": lines}, headers=auth("brand_x"), timeout=30
    )
    assert r.status_code == 200, r.text
    v = r.json()["verdicts"]
    assert [x["decision"] for x in v] == ["ok", "rejected", "rejected"]
    assert (
        set(v[1]["claims"]) == {"price_guarantee", "superlative"} and "shorter than" in v[2]["violations"][0]
    )
    assert "health" in r.json()["policy"]["blocked_claims"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"lines": ["a fine line of copy"]}, {}, 401),
        ({"lines": []}, auth("brand_x"), 400),
        ({"lines": ["x"] * 21}, auth("brand_x"), 400),
        ({"lines": [1]}, auth("brand_x"), 400),
        ({"lines": ["ok line here"], "extra": 1}, auth("brand_x"), 400),
        ({"lines": ["y" * 1001]}, auth("brand_x"), 400),
    ],
)
def test_governance_check_refuses_bad_input(serve_url: str, body: dict, headers: dict, status: int) -> None:
    r = httpx.post(f"{serve_url}/v1/governance/check", json=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_harmonize_maps_a_retailer_export_header(serve_url: str) -> None:
    fields = ["cust_key", "txn_day", "evt", "item_id", "sales_amt", "loyalty_tier"]
    r = httpx.post(f"{serve_url}/v1/harmonize", json={"fields": fields}, headers=auth("brand_x"), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mapping"] == {
        "cust_key": "shopper_id",
        "txn_day": "event_date",
        "evt": "event_type",
        "item_id": "sku",
        "sales_amt": "revenue",
    }
    assert body["unmapped"] == ["loyalty_tier"] and "placement" in body["missing"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"fields": ["sku"]}, {}, 401),
        ({"fields": []}, auth("brand_x"), 400),
        ({"fields": ["a", "a"]}, auth("brand_x"), 400),
        ({"fields": [""]}, auth("brand_x"), 400),
        ({"fields": "sku"}, auth("brand_x"), 400),
        ({"fields": ["x" * 65]}, auth("brand_x"), 400),
    ],
)
def test_harmonize_refuses_bad_input(serve_url: str, body: dict, headers: dict, status: int) -> None:
    r = httpx.post(f"{serve_url}/v1/harmonize", json=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text


def test_the_review_queue_and_experiments_outlive_their_boards(serve_url: str, app_config: Any) -> None:
    """On Ray: the queue and the experiments live in actors (every router replica sees one of each), written
    beside the registry; a new cluster starts without the actors: kill both, and both read back."""
    import time

    import ray

    from serving.records import Records

    line = f"Head: Fresh Fresh Roast ({time.time_ns()})"
    r = httpx.post(
        f"{serve_url}/v1/governance/check", json={"lines": [line]}, headers=auth("brand_x"), timeout=30
    )
    review_id = r.json()["verdicts"][0]["review_id"]
    exp_id = f"durable-{time.time_ns() % 10**9}"
    spec = {
        "id": exp_id,
        "arms": [{"name": "a", "model": "base", "share": 1}, {"name": "b", "model": "base", "share": 1}],
    }
    assert (
        httpx.post(f"{serve_url}/v1/experiments", json=spec, headers=auth("brand_x"), timeout=30).status_code
        == 201
    )
    assert (
        httpx.post(
            f"{serve_url}/v1/experiments/{exp_id}/pause", headers=auth("brand_x"), timeout=30
        ).status_code
        == 200
    )
    records = Records(app_config.adapters.root, app_config.adapters.storage_options)
    for name in ("rmn-reviews", "rmn-experiments"):
        ray.kill(ray.get_actor(f"{name}-{records.key}", namespace="rmn"))
    queue = httpx.get(
        f"{serve_url}/v1/governance/reviews?state=pending", headers=auth("reviewer"), timeout=30
    )
    assert review_id in [x["id"] for x in queue.json()["reviews"]], queue.text
    exp = httpx.get(f"{serve_url}/v1/experiments/{exp_id}", headers=auth("brand_x"), timeout=30)
    assert exp.status_code == 200 and exp.json()["state"] == "paused", exp.text
    decided = httpx.post(
        f"{serve_url}/v1/governance/reviews/{review_id}",
        json={"decision": "approve", "reason": "fine after all"},
        headers=auth("brand_x"),
        timeout=30,
    )
    assert decided.status_code == 403  # through the actor, the role check still holds
    missing = httpx.post(
        f"{serve_url}/v1/governance/reviews/rev-nope",
        json={"decision": "approve", "reason": "x"},
        headers=auth("reviewer"),
        timeout=30,
    )
    assert (
        missing.status_code == 404 and "no review" in missing.json()["error"]["message"]
    )  # raised in the actor
