"""The clean-room endpoints on the session app (real Ray Serve; DuckDB in the clean-room replica)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.tenants import auth


def query(url: str, body: dict, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/cleanroom/query", json=body, headers=headers, timeout=30)


def test_query_releases_only_cells_with_k_distinct_shoppers(serve_url: str) -> None:
    r = query(
        serve_url,
        {"retailer": "acme", "query": {"dimensions": ["sku"], "metrics": ["purchases"]}},
        auth("brand_x"),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert {c["sku"] for c in body["cells"]} == {"at_k", "above_k"} and body["k"] == 3
    assert body["suppressed_cells"] == 2 and body["suppression_reason"] == "fewer than 3 distinct shoppers"
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        ({"retailer": "acme", "query": {"metrics": ["purchases"]}}, {}, 401, "missing API key"),
        ({"retailer": "nope", "query": {"metrics": ["purchases"]}}, auth("brand_x"), 404, "no clean room"),
        ({"retailer": "acme", "query": {"metrics": ["max_revenue"]}}, auth("brand_x"), 400, "not allowed"),
        (
            {"retailer": "acme", "query": {"metrics": ["purchases"], "sql": "SELECT 1"}},
            auth("brand_x"),
            400,
            "invalid query",
        ),
        (
            {
                "retailer": "acme",
                "query": {
                    "metrics": ["purchases"],
                    "filters": [{"column": "shopper_id", "op": "eq", "value": "whale"}],
                },
            },
            auth("brand_x"),
            400,
            "identity or blocked",
        ),
    ],
)
def test_refusals(
    serve_url: str, app_config: Any, body: dict, headers: dict[str, str], status: int, needle: str
) -> None:
    r = query(serve_url, body, headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    if status == 400:  # refused queries are audited too, malformed ones included
        audit = Path(app_config.cleanroom.retailers[0].db_path).with_suffix(".audit.jsonl")
        last = json.loads(audit.read_text().splitlines()[-1])
        assert last["decision"] == "refused" and needle in last["reason"]


def test_differencing_is_refused_across_tenants(serve_url: str) -> None:
    def skus(*s: str) -> dict:
        return {
            "retailer": "acme",
            "query": {"metrics": ["purchases"], "filters": [{"column": "sku", "op": "in", "value": list(s)}]},
        }

    assert query(serve_url, skus("at_k", "above_k"), auth("agency")).status_code == 200
    r = query(serve_url, skus("at_k", "above_k", "one_shopper"), auth("agency"))
    assert r.status_code == 400 and "differencing" in r.json()["error"]["message"]
    # another tenant differencing against the agency's release is refused too: the history is the room's
    r = query(serve_url, skus("at_k", "above_k", "one_shopper"), auth("brand_x"))
    assert r.status_code == 400 and "any tenant" in r.json()["error"]["message"]


def test_schema_endpoint(serve_url: str) -> None:
    r = httpx.get(f"{serve_url}/v1/cleanroom/schema", params={"retailer": "acme"}, headers=auth("brand_y"))
    assert r.status_code == 200
    body = r.json()
    assert body["k"] == 3 and "margin" in body["blocked_fields"] and "sku" in body["dimensions"]
    assert (
        httpx.get(
            f"{serve_url}/v1/cleanroom/schema", params={"retailer": "x"}, headers=auth("brand_y")
        ).status_code
        == 404
    )


def test_dp_budget_is_spent_reported_and_enforced(serve_url: str, app_config: Any) -> None:
    """shopco: DP with epsilon 1 per query, a budget of 2.5, and 4 queries/minute per tenant."""
    headers = auth("brand_y")
    budget = httpx.get(f"{serve_url}/v1/cleanroom/budget", params={"retailer": "shopco"}, headers=headers)
    assert budget.status_code == 200 and budget.json()["epsilon_remaining"] == 2.5

    def ask(metric: str, **extra: float) -> httpx.Response:
        return query(serve_url, {"retailer": "shopco", "query": {"metrics": [metric], **extra}}, headers)

    first = ask("purchases")
    assert first.status_code == 200 and first.json()["noisy"] and first.json()["epsilon_spent"] == 1.0
    again = ask("purchases")  # stored answer: same noise, nothing spent
    assert again.json()["cells"] == first.json()["cells"] and again.json()["epsilon_spent"] == 0
    assert ask("revenue").status_code == 200
    refused = ask("units")  # 1.0 needed, 0.5 left
    assert refused.status_code == 403 and "budget exhausted" in refused.json()["error"]["message"]
    limited = ask("clicks", epsilon=0.5)  # the 5th query within a minute
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    last = json.loads(
        Path(app_config.cleanroom.retailers[1].db_path)
        .with_suffix(".audit.jsonl")
        .read_text()
        .splitlines()[-1]
    )
    assert (last["tenant"], last["decision"]) == ("brand_y", "refused") and "rate limit" in last["reason"]
    after = httpx.get(f"{serve_url}/v1/cleanroom/budget", params={"retailer": "shopco"}, headers=headers)
    assert after.json()["epsilon_spent"] == 2.0 and after.json()["epsilon_remaining"] == 0.5
    other = httpx.get(
        f"{serve_url}/v1/cleanroom/budget", params={"retailer": "shopco"}, headers=auth("brand_x")
    )
    assert other.json()["epsilon_spent"] == 0.0  # per tenant


def test_a_brand_sees_only_its_own_rows(serve_url: str) -> None:
    """acme's test events are brand "brewmax": brand_x owns it (policy brand_owners), brand_y does not."""
    mine = query(serve_url, {"retailer": "acme", "query": {"metrics": ["purchases"]}}, auth("brand_x"))
    theirs = query(serve_url, {"retailer": "acme", "query": {"metrics": ["clicks"]}}, auth("brand_y"))
    assert mine.status_code == 200 and mine.json()["cells"]
    assert theirs.status_code == 200 and theirs.json()["cells"] == []  # brand_y's rows only: none here
    peek = {"metrics": ["clicks"], "filters": [{"column": "brand", "op": "eq", "value": "brewmax"}]}
    r = query(serve_url, {"retailer": "acme", "query": peek}, auth("brand_y"))
    assert r.status_code == 403 and "outside your scope" in r.json()["error"]["message"]
    bench = {"metrics": ["purchases"], "dimensions": ["category"], "scope": "benchmark"}
    r = query(serve_url, {"retailer": "acme", "query": bench}, auth("brand_y"))
    # every acme row is brewmax: the category's total would equal brand_x's released total (`mine`), i.e. say
    # that no other brand sold anything — a zero difference between differently selected rows is refused
    assert r.status_code == 400 and "differencing" in r.json()["error"]["message"], r.text
    fine = {**bench, "dimensions": ["sku"]}
    r = query(serve_url, {"retailer": "acme", "query": fine}, auth("brand_y"))
    assert r.status_code == 400 and "benchmark groups only by" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (
            '{"retailer": "acme", "query": {"metrics": ["purchases"], "filters": '
            '[{"column": "sku", "op": "eq", "value": "a\\ud800"}]}}',
            "surrogate",
        ),
        (
            '{"retailer": "acme", "query": {"metrics": ["purchases"], "filters": '
            '[{"column": "sku", "op": "in", "value": ' + json.dumps(["x"] * 5000) + "}]}}",
            "at most 100",
        ),
        ('{"retailer": "acme", "query": [1, 2]}', "invalid query"),
        (
            '{"retailer": "shopco", "query": {"metrics": ["clicks"], "epsilon": 5e-324}}',
            "below the policy's floor",
        ),
        (
            '{"retailer": "shopco", "query": {"metrics": ["clicks"], "epsilon": 1e-308}}',
            "below the policy's floor",
        ),
        ('{"retailer": "shopco", "query": {"metrics": ["clicks"], "epsilon": 1e309}}', "invalid query"),
    ],
)
def test_hostile_input_is_a_400_with_a_reason(serve_url: str, raw: str, needle: str) -> None:
    headers = {**auth("brand_x"), "content-type": "application/json"}
    r = httpx.post(f"{serve_url}/v1/cleanroom/query", content=raw, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_market_rooms_keep_their_state_through_eviction_and_a_killed_replica(
    serve_url: str, app_config: Any
) -> None:
    """A market room's releases (and ledgers) live in cleanroom.state_dir: touching 8 other seeds evicts
    the room, killing the clean-room replica (Ray's actor API) restarts everything in memory; the same
    question still gets the same stored answer, and a DP ledger keeps what was spent."""
    import time

    import ray
    from ray import serve

    from tests.serve.conftest import APP

    handle = serve.get_deployment_handle("cleanroom", APP)
    market = app_config.comparison.market

    def prepare(seed: int) -> str:
        cfg = market.model_copy(update={"seed": seed})
        return handle.prepare_market.remote(cfg.model_dump_json()).result(timeout_s=120)["retailer"]

    q = {"metrics": ["revenue"], "dimensions": ["placement"]}
    room = prepare(1001)
    first = query(serve_url, {"retailer": room, "query": q}, auth("brand_x"))
    assert first.status_code == 200 and not first.json()["stored_answer"], first.text
    for seed in range(1002, 1010):  # 8 more rooms: 1001 is evicted
        prepare(seed)
    assert prepare(1001) == room
    evicted = query(serve_url, {"retailer": room, "query": q}, auth("brand_x")).json()
    assert evicted["stored_answer"] and evicted["cells"] == first.json()["cells"]

    def spent() -> float:
        r = httpx.get(
            f"{serve_url}/v1/cleanroom/budget", params={"retailer": "shopco"}, headers=auth("brand_x")
        )
        return float(r.json()["epsilon_spent"])

    q_dp = {"retailer": "shopco", "query": {"metrics": ["impressions"], "epsilon": 0.25}}
    assert query(serve_url, q_dp, auth("brand_x")).status_code == 200
    before = spent()
    assert before >= 0.25
    name = handle.info.remote().result(timeout_s=30)["actor"]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 60
    while True:  # Serve replaces the replica; until then the call fails
        try:
            assert prepare(1001) == room
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert handle.info.remote().result(timeout_s=30)["actor"] != name  # a new replica
    restarted = query(serve_url, {"retailer": room, "query": q}, auth("brand_x")).json()
    assert restarted["stored_answer"] and restarted["cells"] == first.json()["cells"]
    assert spent() == before  # the ledger next to shopco's DuckDB file
