"""Engine replicas sharing one node's cores: 1 replica vs 2 replicas, with and without core claims.

On this node (``os.sched_getaffinity``): (a) one engine replica bound to every core; (b) two replicas, each
claiming its own cores (``engine.cpu_threads`` derived from num_cpus, serving/engines/cpu_threads.py, the
default); (c) two replicas both bound to every core (what vLLM's ``auto`` binding did before: every replica
takes the whole node). Each runs ``--clients`` closed-loop clients sending ``--tokens``-token completions
through the HTTP path for ``--seconds``. Writes ``bench/results/replicas.json`` (throughput, p50/p99, ratios).
Usage: ``python -m bench.replicas [--model tiny|demo]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_results

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(q * (len(xs) - 1)))], 4) if xs else 0.0


def _run(cfg: Any, clients: int, tokens: int, seconds: float) -> dict[str, Any]:
    import httpx

    from serving.local import local_app

    with local_app(cfg, num_cpus=4) as url:
        lat: list[float] = []

        async def client() -> None:
            async with httpx.AsyncClient(timeout=300) as c:
                while time.monotonic() < stop:
                    t = time.monotonic()
                    body = {"model": "base", "prompt": "coffee", "max_tokens": tokens, "ignore_eos": True}
                    r = await c.post(f"{url}/v1/completions", json=body)
                    if r.status_code == 200:
                        lat.append(time.monotonic() - t)

        async def warm() -> None:
            async with httpx.AsyncClient(timeout=300) as c:
                await asyncio.gather(
                    *(
                        c.post(
                            f"{url}/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 2}
                        )
                        for _ in range(8)
                    )
                )

        asyncio.run(warm())
        stop = time.monotonic() + seconds

        async def load() -> None:
            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), seconds + 300)

        asyncio.run(load())
    return {
        "requests": len(lat),
        "tokens_per_s": round(len(lat) * tokens / seconds, 1),
        "p50_s": _pct(lat, 0.5),
        "p99_s": _pct(lat, 0.99),
        "mean_s": round(statistics.mean(lat), 4) if lat else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "demo"], default="tiny")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()

    from serving.config import AppConfig

    work = Path(tempfile.mkdtemp(prefix="rmn-bench-replicas-"))
    if args.model == "tiny":
        from serving.modelprep.tiny import build_tiny_model

        model_dir = build_tiny_model(work / "model")
    else:
        from serving.demo.defaults import demo_model_dir
        from serving.modelprep.smollm2 import prepare_smollm2

        model_dir = prepare_smollm2(demo_model_dir())
    cores = sorted(os.sched_getaffinity(0))
    every = ",".join(str(c) for c in cores)

    def cfg(replicas: int, bind: str | None) -> Any:
        env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
        if bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind
        return AppConfig.model_validate(
            {
                "model": {"path": str(model_dir)},
                "adapters": {"root": str(work / "registry"), "cache_root": str(work / "cache")},
                "engine": {"max_model_len": 256},
                "engine_deployment": {
                    "num_replicas": replicas,
                    "num_cpus": len(cores) / replicas,
                    "max_ongoing_requests": 64,
                    "env": env,
                },
            }
        )

    runs = {
        "one_replica_all_cores": cfg(1, None),
        "two_replicas_claimed_cores": cfg(2, None),
        "two_replicas_both_on_all_cores": cfg(2, every),
    }
    results: dict[str, Any] = {
        "model": args.model,
        "cores": cores,
        "clients": args.clients,
        "tokens": args.tokens,
        "seconds": args.seconds,
        "runs": {},
    }
    for name, c in runs.items():
        results["runs"][name] = _run(c, args.clients, args.tokens, args.seconds)
        print(name, results["runs"][name], flush=True)
    r = results["runs"]
    base = r["one_replica_all_cores"]["tokens_per_s"]
    results["ratios"] = {
        "two_claimed_vs_one": round(r["two_replicas_claimed_cores"]["tokens_per_s"] / base, 3),
        "two_overlapping_vs_one": round(r["two_replicas_both_on_all_cores"]["tokens_per_s"] / base, 3),
        "claimed_vs_overlapping": round(
            r["two_replicas_claimed_cores"]["tokens_per_s"]
            / r["two_replicas_both_on_all_cores"]["tokens_per_s"],
            3,
        ),
    }
    print(results["ratios"], flush=True)
    write_results(Path("bench/results/replicas.json"), results)


if __name__ == "__main__":
    main()
