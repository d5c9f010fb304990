"""Observability and scaling on the Serve tier: every metric the Grafana dashboard queries is in a live
scrape after traffic; the comparison deployment scales up under load and back down after it."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.serve.conftest import APP
from tests.tenants import ADMIN, auth
from tests.unit.test_deploy import dashboard_metrics


def test_every_dashboard_metric_is_scraped_after_traffic(serve_url: str, app_config: Any) -> None:
    chat = {"model": "base:rm+acme", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert (
        httpx.post(f"{serve_url}/v1/chat/completions", json=chat, headers=ADMIN, timeout=60).status_code
        == 200
    )
    assert httpx.post(f"{serve_url}/v1/chat/completions", json=chat, timeout=60).status_code == 401
    q = {"retailer": "shopco", "query": {"metrics": ["clicks"], "epsilon": 0.25}}
    assert httpx.post(f"{serve_url}/v1/cleanroom/query", json=q, headers=ADMIN, timeout=60).status_code == 200
    # ten new composites, twice: more than 2 replicas x 4 resident slots, so some are evicted, and reloading
    # one finds it already built on this node (a composite-cache hit)
    for _ in range(2):
        for i in range(10):
            stack = {**chat, "model": f"base:rm*0.{i + 1}+acme*0.3"}
            r = httpx.post(f"{serve_url}/v1/chat/completions", json=stack, headers=ADMIN, timeout=60)
            assert r.status_code == 200, r.text
    refused = {"retailer": "acme", "query": {"metrics": ["max_revenue"]}}
    assert (
        httpx.post(f"{serve_url}/v1/cleanroom/query", json=refused, headers=ADMIN, timeout=60).status_code
        == 400
    )
    # vLLM's own metrics need the real engine (tests/integration/test_serving_api.py); retries and sheds
    # need a fault and an overload (tests/serve/test_resilience.py checks them after both)
    wanted = {m for m in dashboard_metrics() if m not in EVENT_DRIVEN and not m.startswith("ray_vllm_")}
    assert_scraped(wanted, app_config.http.metrics_port)


EVENT_DRIVEN = {"ray_rmn_request_retries_total", "ray_rmn_requests_shed_total"}


def assert_scraped(wanted: set[str], port: int, timeout: float = 90) -> None:
    """Poll the node's /metrics until every name in ``wanted`` is there (Ray exports every few seconds)."""
    missing = wanted
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        present = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        present |= {p.removesuffix(s) for p in present for s in ("_bucket", "_count", "_sum")}
        missing = wanted - present
        if not missing:
            return
        time.sleep(2)
    assert not missing, sorted(missing)


def running_replicas(deployment: str) -> int:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    status = serve.status().applications[APP].deployments[deployment]
    return int(status.replica_states.get(ReplicaState.RUNNING, 0))


@pytest.mark.slow  # ~20 s of Ray's autoscaling loop: in `make test`, not in `make test-fast`
def test_comparison_deployment_scales_up_under_load_and_back_down(serve_url: str) -> None:
    """Autoscaling (session config): min 1, max 2, target 1 ongoing request, look-back 2 s, down after 5 s."""
    assert running_replicas("comparison") == 1
    stop = threading.Event()
    codes: list[int] = []
    body = {"budget": 500, "manufacturer": "brand_x", "write_text": False}

    def load() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                codes.append(
                    client.post(
                        f"{serve_url}/v1/plans/compare", json=body, headers=auth("brand_x")
                    ).status_code
                )

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    peak, deadline = 1, time.monotonic() + 120
    try:
        while time.monotonic() < deadline and peak < 2:
            peak = max(peak, running_replicas("comparison"))
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert peak == 2, f"never scaled up; {len(codes)} requests, statuses {sorted(set(codes))}"
    assert codes and set(codes) <= {200, 503}, sorted(set(codes))  # overload may shed (503), never lose
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and running_replicas("comparison") > 1:
        time.sleep(1)
    assert running_replicas("comparison") == 1


def test_a_requests_audit_line_is_in_the_router_replicas_log_file(serve_url: str) -> None:
    """The audit logger is a child of Serve's, so each replica's JSON log file holds the decision with the
    request id (Ray configures only Serve's logger inside replicas)."""
    import json
    from pathlib import Path

    import ray

    chat = {"model": "base:rm+acme", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    r = httpx.post(f"{serve_url}/v1/chat/completions", json=chat, headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    deadline, found = time.monotonic() + 30, []
    while not found and time.monotonic() < deadline:
        for f in logs.glob("replica_*router*.log"):
            lines = [json.loads(ln) for ln in f.read_text().splitlines() if rid in ln]
            found += [
                ln for ln in lines if ln.get("request_id") == rid and '"event": "compose"' in ln["message"]
            ]
        time.sleep(0.5)
    assert found, f"no audit line with request id {rid} in {sorted(p.name for p in logs.iterdir())}"
    record = json.loads(found[0]["message"])
    assert record["request_id"] == rid and record["stack"] and record["tenant"] == "admin"


def test_loading_composites_adds_no_metric_series_per_composite(serve_url: str, app_config: Any) -> None:
    """Serve's multiplexing would keep a ``serve_registered_multiplexed_model_id`` series per model id ever
    loaded; with content-addressed composites that set grows without end. The engine replaces that gauge."""
    port = app_config.http.metrics_port
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for i in range(6):  # new composites: each one loaded into an engine replica
        body = {**chat, "model": f"base:rm*0.{i + 1}5+acme*0.2"}
        r = httpx.post(f"{serve_url}/v1/chat/completions", json=body, headers=ADMIN, timeout=60)
        assert r.status_code == 200, r.text
    assert_scraped({"ray_rmn_adapter_loads_total", "ray_serve_num_multiplexed_models"}, port)
    time.sleep(12)  # Serve pushes its multiplexed model ids every few seconds; Ray exports every few seconds
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    assert "serve_registered_multiplexed_model_id{" not in text
