"""Serving benchmark: throughput with 0/1/N adapters and the HTTP path's added latency.

Writes ``bench/results/serving-<model>.json``. Every number is measured in this run; ratios are taken
within the run because the machine is noisy. Usage::

    python -m bench.serving [--model tiny|demo] [--requests 32] [--tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_results

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def _throughput(engine: Any, lora_names: list[str], n: int, tokens: int) -> dict[str, float]:
    async def one(i: int) -> int:
        model = lora_names[i % len(lora_names)] if lora_names else "base"
        body = {
            "model": model,
            "prompt": f"retail media plan number {i}",
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        items = [x async for x in engine.handle("completion", body)]
        return int(items[1]["body"]["usage"]["completion_tokens"])

    t = time.perf_counter()
    produced = sum(await asyncio.gather(*[one(i) for i in range(n)]))
    dt = time.perf_counter() - t
    return {"tokens": produced, "seconds": round(dt, 3), "tokens_per_s": round(produced / dt, 1)}


async def _direct_latency(engine: Any, model: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        _ = [
            x
            async for x in engine.handle("completion", {"model": model, "prompt": f"hi {i}", "max_tokens": 1})
        ]
        out.append((time.perf_counter() - t) * 1000)
    return out


def _http_latency(url: str, model: str, n: int) -> list[float]:
    import httpx

    out = []
    with httpx.Client(timeout=60) as c:
        for i in range(n):
            t = time.perf_counter()
            r = c.post(f"{url}/v1/completions", json={"model": model, "prompt": f"hi {i}", "max_tokens": 1})
            r.raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    ap.add_argument("--requests", type=int, default=32, help="concurrent requests per throughput case")
    ap.add_argument("--tokens", type=int, default=32, help="generated tokens per request")
    ap.add_argument("--latency-requests", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from adapters import AdapterRegistry
    from adapters.synthetic import make_random_adapter
    from serving.config import AppConfig
    from serving.engines.vllm_engine import VLLMEngine
    from serving.local import local_app
    from serving.modelprep.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="rmn-bench-"))
    if args.model == "tiny":
        model_dir = build_tiny_model(work / "model", seed=0)
    else:
        from serving.demo.defaults import demo_model_dir
        from serving.modelprep.smollm2 import prepare_smollm2

        model_dir = prepare_smollm2(demo_model_dir())
    reg = AdapterRegistry(work / "registry", max_rank=16)
    for i in range(16):
        src = make_random_adapter(model_dir, work / f"src{i}", seed=100 + i, rank=8, scale=0.05)
        reg.register(
            src, id=f"bench{i}", kind="task", owner="bench", base_model=args.model, base_model_revision="x"
        )
    cfg = AppConfig.model_validate(
        {
            "model": {"path": str(model_dir)},
            "adapters": {"root": str(work / "registry")},
            "engine": {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 16, "max_model_len": 512},
            "engine_deployment": {
                "num_replicas": 1,
                "num_cpus": 1,
                "max_ongoing_requests": 64,
                "max_queued_requests": 256,
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            },
        }
    )

    results: dict[str, Any] = {
        "model": args.model,
        "requests": args.requests,
        "tokens_per_request": args.tokens,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }

    async def direct() -> None:
        eng = VLLMEngine(cfg.model, cfg.engine)
        await eng.start()
        names = [f"base:bench{i}@1" for i in range(16)]
        for i, name in enumerate(names):
            await eng.add_adapter(name, str(reg.path(f"bench{i}")))
        await _throughput(eng, [], 8, 4)  # warm-up
        cases = {"base_only": [], "adapters_1": names[:1], "adapters_4": names[:4], "adapters_16": names}
        tp = {}
        for label, lst in cases.items():
            tp[label] = await _throughput(eng, lst, args.requests, args.tokens)
            print(label, tp[label], flush=True)
        results["throughput"] = tp
        base = tp["base_only"]["tokens_per_s"]
        results["throughput_ratio_vs_base"] = {k: round(v["tokens_per_s"] / base, 3) for k, v in tp.items()}
        await _direct_latency(eng, "base:bench0@1", 5)  # warm-up, as for the HTTP path
        lat = await _direct_latency(eng, "base:bench0@1", args.latency_requests)
        results["direct_latency_ms"] = {"p50": round(_pct(lat, 0.5), 2), "p99": round(_pct(lat, 0.99), 2)}
        eng.shutdown()

    asyncio.run(direct())
    with local_app(cfg, num_cpus=4) as url:
        _http_latency(url, "base:bench0", 5)  # warm-up (adapter load)
        lat = _http_latency(url, "base:bench0", args.latency_requests)
    results["http_latency_ms"] = {"p50": round(_pct(lat, 0.5), 2), "p99": round(_pct(lat, 0.99), 2)}
    d, h = results["direct_latency_ms"], results["http_latency_ms"]
    results["http_added_latency_ms"] = {
        "p50": round(h["p50"] - d["p50"], 2),
        "p99": round(h["p99"] - d["p99"], 2),
    }
    results["http_latency_mean_ms"] = round(statistics.mean(lat), 2)
    out = Path(args.out or f"bench/results/serving-{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
