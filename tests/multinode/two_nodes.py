"""Two Ray nodes on one machine, no shared filesystem for adapters: the scenario behind
tests/serve/test_two_nodes.py (run in its own process: it owns its Ray cluster).

A head node (HTTP proxy, router) and a worker node, each with its own custom resource; the engine
deployment's two replicas are spread one per node (``max_replicas_per_node: 1``), each with its own
node-local download and composite caches (``{node}`` in the cache paths). The registry is a bucket on a
real S3-compatible server (moto, loopback). Steps, each asserted here:
1. both engine replicas run, on different nodes;
2. a brand uploads its adapter over HTTP; it and a stack of it are served by replicas on BOTH nodes, each
   of which downloaded the files into its own cache (verified by sha256) and composed the stack itself;
3. the worker node is removed under load: every request gets an answer (200, or 503 + Retry-After while
   the loss is noticed) and requests after the removal are answered 200 by the surviving node;
4. the object store goes away: adapters already on the node keep serving; one never fetched answers
   503 + Retry-After within seconds, and so does the metadata API.
Prints one JSON line of observations (``RESULT {...}``); exits non-zero on a failed step.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.ports import free_port
from tests.s3 import start_s3
from tests.tenants import ADMIN, auth, tenants_config

ADAPTER = "brand_x_holiday"
BASE = "base"


def chat(url: str, model: str, who: str = "brand_x", timeout: float = 30) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{url}/v1/chat/completions", headers=auth(who), json=body, timeout=timeout)


def step(name: str) -> None:
    print(f"--- {name}", flush=True)


def engine_nodes() -> dict[str, str]:
    """Engine replica actor name -> node id, for replicas alive now."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.name: a.node_id for a in actors if a.name and "engine" in a.name and "rmn2" in a.name}


def cache_entries(root: Path) -> dict[str, list[str]]:
    """Per node directory under ``root``: its download and composite cache entries."""
    out: dict[str, list[str]] = {}
    for node_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        names = []
        for sub in ("downloads", "composites"):
            d = node_dir / sub
            if d.is_dir():
                names += [f"{sub}/{p.name}" for p in d.iterdir() if not p.name.startswith(".")]
        out[node_dir.name] = sorted(names)
    return out


def main() -> int:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from adapters import AdapterRegistry
    from adapters.hashing import sha256_file
    from adapters.store import open_store
    from adapters.synthetic import make_random_adapter
    from serving.app import build_app
    from serving.config import AppConfig
    from serving.modelprep.tiny import build_tiny_model
    from tests.conftest import fake_engine

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="rmn-two-nodes-"))
    model = build_tiny_model(work / "model", seed=0)
    src = {
        name: make_random_adapter(model, work / "src" / name, seed=seed, rank=4, alpha=8, scale=0.1)
        for name, seed in (("rm", 1), ("upload", 2), ("never_used", 3))
    }
    result: dict[str, Any] = {}
    s3 = start_s3()
    cluster = None
    try:
        url = s3.make_bucket("rmn-two-nodes") + "/adapters"
        seed_reg = AdapterRegistry(
            url, store=open_store(url, cache_root=work / "seed-cache", options=s3.options()), metadata_ttl_s=0
        )
        common = {"base_model_dir": model, "base_model": model.name}
        seed_reg.register(src["rm"], id="rm", kind="industry", owner="rmn", **common)
        seed_reg.register(src["never_used"], id="acme", kind="retailer", owner="acme", **common)

        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2, "resources": {"head_node": 1}},
        )
        worker = cluster.add_node(num_cpus=2, resources={"worker_node": 1})
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        cluster.wait_for_nodes()
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
        caches = work / "nodes"
        config = AppConfig.model_validate(
            {
                "model": {"path": str(model)},
                "adapters": {
                    "root": url,
                    "storage_options": s3.options(),
                    "store_retries": 2,
                    "store_timeout_s": 1,
                    "metadata_ttl_s": 0.5,
                    "download_root": str(caches / "{node}" / "downloads"),
                    "cache_root": str(caches / "{node}" / "composites"),
                },
                "engine": {
                    "max_lora_rank": 16,
                    "max_cpu_loras": 4,
                },
                "engine_deployment": {
                    "num_replicas": 2,
                    "max_replicas_per_node": 1,
                    "num_cpus": 0.1,
                    "max_ongoing_requests": 2,
                    "graceful_shutdown_timeout_s": 1,
                },
                "router_deployment": {"num_cpus": 0.1, "resources": {"head_node": 0.1}},
                "http": {"port": port, "request_timeout_s": 10},
                "federation": {"tenants": tenants_config(), "policy": {"industry_adapter": "rm"}},
            }
        )
        serve.run(build_app(config, fake_engine()), name="rmn2", route_prefix="/")
        base_url = f"http://127.0.0.1:{port}"

        step("1. two engine replicas, one per node")
        nodes = engine_nodes()
        result["engine_nodes"] = len(set(nodes.values()))
        assert len(nodes) == 2 and len(set(nodes.values())) == 2, nodes

        step("2. upload over HTTP, served from both nodes")
        files = {
            "adapter_config.json": (src["upload"] / "adapter_config.json").read_bytes(),
            "adapter_model.safetensors": (src["upload"] / "adapter_model.safetensors").read_bytes(),
        }
        r = httpx.post(
            f"{base_url}/v1/adapters",
            headers=auth("brand_x"),
            files={k: (k, v) for k, v in files.items()},
            data={
                "id": ADAPTER,
                "kind": "manufacturer",
                "visibility": "private",
                "description": "holiday tone",
            },
            timeout=60,
        )
        assert r.status_code == 201, r.text
        manifest = r.json()
        single, stack = f"{BASE}:{ADAPTER}", f"{BASE}:rm+{ADAPTER}"
        replicas: dict[str, set[str]] = {single: set(), stack: set()}
        with cf.ThreadPoolExecutor(8) as pool:  # concurrency above one replica's 2 slots: both serve
            deadline = time.monotonic() + 60
            while any(len(v) < 2 for v in replicas.values()):
                assert time.monotonic() < deadline, {k: sorted(v) for k, v in replicas.items()}
                futures = {pool.submit(chat, base_url, m): m for m in (single, stack) for _ in range(8)}
                for f, m in futures.items():
                    resp = f.result()
                    assert resp.status_code in (200, 503), resp.text
                    if resp.status_code == 200:
                        replicas[m].add(resp.headers["x-rmn-replica"])
        result["replicas_serving"] = {k: len(v) for k, v in replicas.items()}
        entries = cache_entries(caches)
        result["node_caches"] = entries
        assert len(entries) == 2, entries  # one cache directory per node, nothing shared
        key = f"{manifest['sha256']}-{manifest['config_sha256'][:16]}"
        for node, names in entries.items():
            assert f"downloads/{key}" in names, (node, names)
            assert any(n.startswith("composites/") for n in names), (node, names)
            weights = caches / node / "downloads" / key / "adapter_model.safetensors"
            assert sha256_file(weights) == manifest["sha256"]

        step("3. remove the worker node under load")
        statuses: Counter[str] = Counter()
        after: Counter[str] = Counter()
        removed_at: list[float] = []
        stop = threading.Event()
        lock = threading.Lock()

        def client(model: str) -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    resp = chat(base_url, model, timeout=30)
                    code = str(resp.status_code)
                    if resp.status_code == 503:
                        assert "retry-after" in resp.headers, resp.headers
                        code = "503+retry-after"
                except httpx.HTTPError as e:  # unanswered: a failure of this step
                    code = f"unanswered:{type(e).__name__}"
                with lock:
                    statuses[code] += 1
                    if removed_at and t0 > removed_at[0] + 5:
                        after[code] += 1

        threads = [threading.Thread(target=client, args=(m,)) for m in (single, stack) * 3]
        for t in threads:
            t.start()
        time.sleep(3)
        cluster.remove_node(worker)
        removed_at.append(time.monotonic())
        time.sleep(15)
        stop.set()
        for t in threads:
            t.join(60)
        survivors = engine_nodes()
        result["engine_nodes_after_loss"] = len(set(survivors.values()))
        assert result["engine_nodes_after_loss"] == 1, survivors  # the worker's replica is gone
        result["under_node_loss"] = dict(statuses)
        result["after_loss_settled"] = dict(after)
        assert not [
            c for c in statuses if c.startswith("unanswered") or c not in ("200", "503+retry-after")
        ], statuses
        assert after and set(after) == {"200"}, after

        step("4. the object store goes away")
        s3.stop()
        time.sleep(1)  # past the metadata TTL
        t0 = time.monotonic()
        kept = chat(base_url, stack)
        result["cached_adapter_while_store_down"] = kept.status_code
        assert kept.status_code == 200, kept.text
        r = chat(base_url, f"{BASE}:acme", who="admin")
        fresh_s = time.monotonic() - t0
        result["unfetched_adapter_while_store_down"] = [r.status_code, round(fresh_s, 2)]
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text
        assert fresh_s < 10, fresh_s
        meta = httpx.get(f"{base_url}/v1/adapters/acme", headers=ADMIN, timeout=30)
        result["metadata_while_store_down"] = meta.status_code
        assert meta.status_code == 503 and meta.headers.get("retry-after"), meta.text
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    finally:
        s3.stop()
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
