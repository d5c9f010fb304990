"""Router benchmark: latency the federation router adds, and a new composition's first request.

1. Warm composition, 1-token completions, sequential, interleaved: (a) HTTP through the Serve proxy
   straight to an engine deployment (a second app whose ingress is the engine itself, adapter picked by
   the ``serve_multiplexed_model_id`` header) vs (b) HTTP through proxy → router → engine with tenant
   auth and stack resolution. Added = (b) - (a): the router hop plus its work. Also (c) the engine called
   through a Serve handle from the driver (no HTTP at all), (d) HTTP through proxy → a pass-through
   deployment (no logic: JSON in, the engine's handle, JSON out) → engine: the cost of the extra process hop
   alone, and the router's own CPU work (authenticate + resolve + access check) timed in-process. The
   router's added latency is accounted as hop (d - a) + its work + the rest (b - d - work: its FastAPI
   app, request parsing, metrics and logs).
2. Time to first token (streaming) of the first request on a never-seen composition (compose + load
   into vLLM) vs the same composition warm.
Writes ``bench/results/router-<model>.json``. Usage: ``python -m bench.router [--model tiny|demo]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_results

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
KEY = "bench-key"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(q * (len(xs) - 1)))], 3)


def _ttft_ms(url: str, model: str, headers: dict[str, str]) -> float:
    import httpx

    t = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{url}/v1/completions",
        headers=headers,
        timeout=120,
        json={"model": model, "prompt": "coffee", "max_tokens": 4, "stream": True},
    ) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                return (time.perf_counter() - t) * 1000
    raise RuntimeError("no token streamed")


def _http_engine_class() -> Any:
    """The engine deployment with an HTTP ``__call__`` (benchmark baseline only)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from serving.engine import EngineDeployment

    class HttpEngine(EngineDeployment):
        async def __call__(self, request: Request) -> JSONResponse:
            items = [x async for x in self.generate("completion", await request.json())]
            return JSONResponse(items[1].body, status_code=items[0].status)

    return HttpEngine


def _hop_class(app_name: str) -> Any:
    """A pass-through ingress: the request's JSON to the engine through a Serve handle, the answer back (the
    router's extra process hop without any of its logic; benchmark only)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    class Hop:
        def __init__(self) -> None:
            self.engine = serve.get_deployment_handle("engine", app_name)

        async def __call__(self, request: Request) -> JSONResponse:
            handle = self.engine.options(
                stream=True, multiplexed_model_id=request.headers["serve_multiplexed_model_id"]
            )
            items = [x async for x in handle.generate.remote("completion", await request.json())]
            return JSONResponse(items[1].body, status_code=items[0].status)

    return Hop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--cold", type=int, default=5, help="new compositions to time")
    args = ap.parse_args()

    import httpx
    from ray import serve

    from adapters import AdapterRegistry
    from adapters.synthetic import make_random_adapter
    from federation.access import Gate
    from federation.tenants import hash_key
    from serving.config import AppConfig
    from serving.local import APP_NAME, local_app
    from serving.modelprep.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="rmn-bench-router-"))
    if args.model == "tiny":
        model_dir = build_tiny_model(work / "model")
    else:
        from serving.demo.defaults import demo_model_dir
        from serving.modelprep.smollm2 import prepare_smollm2

        model_dir = prepare_smollm2(demo_model_dir())
    reg = AdapterRegistry(work / "registry", max_rank=64)
    for i, kind in enumerate(["industry", "retailer", "manufacturer", "task"]):
        src = make_random_adapter(model_dir, work / f"src{i}", seed=200 + i, rank=8, scale=0.05)
        reg.register(
            src, id=f"{kind}_a", kind=kind, owner="bench", base_model=args.model, base_model_revision="x"
        )
    cfg = AppConfig.model_validate(
        {
            "model": {"path": str(model_dir)},
            "adapters": {"root": str(work / "registry"), "cache_root": str(work / "cache")},
            "engine": {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 32, "max_model_len": 512},
            "engine_deployment": {"num_replicas": 1, "num_cpus": 1, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
            "federation": {
                "tenants": [
                    {
                        "id": "bench",
                        "role": "admin",
                        "api_key_sha256": hash_key(KEY),
                        "rate_limit_per_minute": 10**6,
                    }
                ],
                "policy": {"industry_adapter": "industry_a"},
            },
        }
    )
    stack = "industry_a+retailer_a+manufacturer_a+task_a"
    headers = {"Authorization": f"Bearer {KEY}"}
    results: dict[str, Any] = {"model": args.model, "stack": stack, "requests": args.requests}

    gate = Gate(  # the router's own work, in-process, configured as the router configures it
        cfg.federation, reg, cfg.model.served_name, cfg.engine.max_lora_rank, cfg.adapters.compress_overflow
    )
    body = {"model": f"base:{stack}", "prompt": "coffee"}
    gate_times = []
    for _ in range(200):
        t = time.perf_counter()
        gate.resolve(gate.admit(headers["Authorization"]), body, "bench")
        gate_times.append((time.perf_counter() - t) * 1000)
    results["router_gate_ms"] = {"p50": _pct(gate_times, 0.5), "p99": _pct(gate_times, 0.99)}

    with local_app(cfg, num_cpus=4) as url:
        c = httpx.Client(timeout=60, headers=headers)
        pinned = c.post(f"{url}/v1/federation/resolve", json=body).json()["model"]
        engine = serve.get_deployment_handle("engine", APP_NAME).options(
            stream=True, multiplexed_model_id=pinned
        )
        req = {"model": pinned, "prompt": "coffee", "max_tokens": 1}

        def direct() -> float:
            t = time.perf_counter()
            items = list(engine.generate.remote("completion", req))
            assert items[0].status == 200, items
            return (time.perf_counter() - t) * 1000

        def http() -> float:
            t = time.perf_counter()
            r = c.post(
                f"{url}/v1/completions", json={"model": f"base:{stack}", "prompt": "coffee", "max_tokens": 1}
            )
            r.raise_for_status()
            return (time.perf_counter() - t) * 1000

        serve.run(
            serve.deployment(name="engine_direct", **cfg.engine_deployment.serve_options())(
                _http_engine_class()
            ).bind(cfg),
            name="direct",
            route_prefix="/direct",
        )

        serve.run(
            serve.deployment(name="hop", **cfg.router_deployment.serve_options())(
                _hop_class(APP_NAME)
            ).bind(),
            name="hop",
            route_prefix="/hop",
        )

        def via(path: str) -> float:
            t = time.perf_counter()
            r = c.post(f"{url}/{path}", json=req, headers={"serve_multiplexed_model_id": pinned})
            r.raise_for_status()
            return (time.perf_counter() - t) * 1000

        for _ in range(5):
            direct(), http(), via("direct"), via("hop")
        d_times, h_times, e_times, p_times = [], [], [], []
        for _ in range(args.requests):  # interleaved, so drift hits all alike
            d_times.append(direct())
            h_times.append(http())
            e_times.append(via("direct"))
            p_times.append(via("hop"))
        serve.delete("direct")
        serve.delete("hop")
        results["http_hop_ms"] = {"p50": _pct(p_times, 0.5), "p99": _pct(p_times, 0.99)}
        results["engine_handle_ms"] = {"p50": _pct(d_times, 0.5), "p99": _pct(d_times, 0.99)}
        results["http_engine_direct_ms"] = {"p50": _pct(e_times, 0.5), "p99": _pct(e_times, 0.99)}
        results["http_router_ms"] = {"p50": _pct(h_times, 0.5), "p99": _pct(h_times, 0.99)}
        results["router_added_ms"] = {
            k: round(results["http_router_ms"][k] - results["http_engine_direct_ms"][k], 3)
            for k in ("p50", "p99")
        }
        hop = round(results["http_hop_ms"]["p50"] - results["http_engine_direct_ms"]["p50"], 3)
        work = results["router_gate_ms"]["p50"]
        results["router_added_p50_account_ms"] = {
            "process_hop": hop,
            "router_work": work,
            "rest": round(results["router_added_ms"]["p50"] - hop - work, 3),
        }
        results["http_and_router_added_vs_handle_ms"] = {
            k: round(results["http_router_ms"][k] - results["engine_handle_ms"][k], 3) for k in ("p50", "p99")
        }
        cold, warm = [], []
        for i in range(args.cold):
            model = f"base:industry_a*0.{i + 1}+retailer_a+manufacturer_a+task_a"  # never seen before
            cold.append(_ttft_ms(url, model, headers))
            warm.extend(_ttft_ms(url, model, headers) for _ in range(3))
        results["ttft_cold_ms"] = round(statistics.median(cold), 1)
        results["ttft_warm_ms"] = round(statistics.median(warm), 1)
        results["ttft_cold_over_warm"] = round(results["ttft_cold_ms"] / results["ttft_warm_ms"], 2)
    out = Path(f"bench/results/router-{args.model}.json")
    write_results(out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
