"""Cluster-wide admission with 2 router replicas and 2 engine replicas (tiny model, vLLM on CPU by default).

1. A tenant's rate limit across both routers: ``--metered-limit`` a minute, three times that many requests sent as
   fast as one client can; accepted vs what the limit allows over the run (the bucket's burst plus its refill).
   Per-replica buckets would accept up to twice as many.
2. Fair share under a flood across replicas: a light tenant's median latency alone, then while a heavy tenant
   floods both routers with ``--flood`` concurrent clients from another process (the heavy tenant's answers
   counted: 200, 503, 429,
   and its throughput), once per ``--reserve`` setting of ``admission.reserve_slots`` (0: fair order alone; 1: the
   default, a slot per router kept for the other tenants) — each on a fresh app, in one run.
   Each setting is measured ``--reps`` times on its app (alone, then flood), and the median ratio is kept: the
   unloaded median moves between reps on a 2-core machine.
Writes ``bench/results/cluster.json``. Usage: ``python -m bench.cluster [--reserve 0,1] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.record import write_results
from serving.gateway.timing import parse_server_timing

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
KEYS = {"heavy": "bench-heavy", "light": "bench-light", "metered": "bench-metered"}


def _config(model_dir: Path, work: Path, metered_limit: int, reserve: int = 1) -> Any:
    from federation.tenants import hash_key
    from serving.config import AppConfig

    tenants = [
        {"id": t, "role": "admin", "api_key_sha256": hash_key(k), "rate_limit_per_minute": 10**6}
        for t, k in KEYS.items()
        if t != "metered"
    ]
    tenants.append(
        {
            "id": "metered",
            "role": "admin",
            "api_key_sha256": hash_key(KEYS["metered"]),
            "rate_limit_per_minute": metered_limit,
        }
    )
    return AppConfig.model_validate(
        {
            "model": {"path": str(model_dir)},
            "adapters": {"root": str(work / "registry"), "cache_root": str(work / "cache")},
            "engine": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 16, "max_model_len": 512},
            "engine_deployment": {
                "num_replicas": 2,
                "num_cpus": 0.5,
                "max_ongoing_requests": 4,
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            },
            "router_deployment": {"num_replicas": 2, "num_cpus": 0.1},
            "http": {"request_timeout_s": 30},
            "admission": {"reserve_slots": reserve},
            "federation": {"tenants": tenants},
        }
    )


def _rate_limit(url: str, limit: int) -> dict[str, Any]:
    import httpx

    codes: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {KEYS['metered']}"}
    t0 = time.monotonic()
    with httpx.Client(timeout=30, headers=headers) as c:
        for _ in range(3 * limit):
            codes[c.get(f"{url}/v1/models").status_code] += 1
    seconds = time.monotonic() - t0
    allowed = limit + seconds * limit / 60
    return {
        "limit_per_minute": limit,
        "sent": 3 * limit,
        "seconds": round(seconds, 2),
        "statuses": dict(codes),
        "allowed_by_the_limit": round(allowed, 1),
        "accepted_over_allowed": round(codes[200] / allowed, 3),
        "within_10_percent": abs(codes[200] / allowed - 1) <= 0.1,
    }


def _light_latencies(url: str, n: int) -> tuple[list[float], list[dict[str, float]]]:
    """The light tenant's ``n`` sequential requests: (latencies, their ``server-timing`` in seconds by name) of
    those answered 200."""
    import httpx

    body = {"model": "base", "prompt": "coffee", "max_tokens": 8, "temperature": 0}
    out: list[float] = []
    timings: list[dict[str, float]] = []
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEYS['light']}"}) as c:
        for _ in range(n):
            t = time.perf_counter()
            r = c.post(f"{url}/v1/completions", json=body)
            if r.status_code == 200:
                out.append(time.perf_counter() - t)
                timings.append(parse_server_timing(r.headers.get("server-timing", "")))
    return out, timings


def _where(latencies: list[float], timings: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds per hop: the router's fair queue, the engine replica, Serve's hops to and from it (the
    router's call less the engine), the router's own work (its time less queue and call), and what is left of
    the client's time (HTTP proxy, client)."""

    def med(f: Any) -> float:
        return round(statistics.median(f(t, lat) for t, lat in zip(timings, latencies, strict=True)), 4)

    return {
        "queue": med(lambda t, _: t.get("queue", 0.0)),
        "engine": med(lambda t, _: t.get("engine", 0.0)),
        "serve_hops": med(lambda t, _: t.get("call", 0.0) - t.get("engine", 0.0)),
        "router": med(lambda t, _: t.get("router", 0.0) - t.get("call", 0.0) - t.get("queue", 0.0)),
        "proxy_and_client": med(lambda t, lat: lat - t.get("router", 0.0)),
    }


def _flood(url: str, clients: int, stop: Any, out: Any) -> None:
    """The heavy tenant, in its own process (it must not share the light client's interpreter lock): ``clients``
    closed-loop clients until ``stop`` is set; puts (status counts, monotonic times of its 200s, the cores it
    used on average: the load generator shares this machine's cores with the app) on ``out``."""
    import httpx

    codes: Counter[int] = Counter()
    done: list[float] = []

    def client() -> None:
        body = {"model": "base", "prompt": "espresso", "max_tokens": 32, "temperature": 0}
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEYS['heavy']}"}) as c:
            while not stop.is_set():
                code = c.post(f"{url}/v1/completions", json=body).status_code
                codes[code] += 1
                if code == 200:
                    done.append(time.monotonic())

    cpu, wall = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((dict(codes), done, (time.process_time() - cpu) / (time.monotonic() - wall)))


def _fairness(url: str, flood: int, n: int) -> dict[str, Any]:
    import multiprocessing

    alone, alone_timings = _light_latencies(url, n)
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    flooder = ctx.Process(target=_flood, args=(url, flood, stop, out))
    flooder.start()
    time.sleep(5)  # the flood fills the queues first
    t0 = time.monotonic()
    try:
        during, timings = _light_latencies(url, n)
    finally:
        t1 = time.monotonic()
        stop.set()
        heavy, done, flood_cores = out.get(timeout=120)
        flooder.join(timeout=30)
    heavy_rps = sum(t0 <= t <= t1 for t in done) / (t1 - t0)
    p50_alone, p50_during = statistics.median(alone), statistics.median(during)
    return {
        "flood_clients": flood,
        "light_requests": n,
        "light_p50_alone_s": round(p50_alone, 3),
        "light_p50_during_flood_s": round(p50_during, 3),
        "ratio": round(p50_during / p50_alone, 2),
        "within_2x": p50_during <= 2 * p50_alone,
        "light_answered_during_flood": len(during),
        "light_p50_queue_wait_during_flood_s": round(
            statistics.median(t.get("queue", 0.0) for t in timings), 4
        ),
        "light_median_s_by_hop": {
            "alone": _where(alone, alone_timings),
            "during_flood": _where(during, timings),
        },
        "heavy_statuses": heavy,
        "heavy_answered_per_s": round(heavy_rps, 2),
        "flood_client_cores_used": round(flood_cores, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metered-limit", type=int, default=120)
    ap.add_argument("--flood", type=int, default=16)
    ap.add_argument("--light", type=int, default=40)
    ap.add_argument(
        "--reserve", default="0,1", help="admission.reserve_slots settings to measure, comma-separated"
    )
    ap.add_argument(
        "--reps",
        type=int,
        default=3,
        help="alone-then-flood measurements per setting (the ratio's median is kept)",
    )
    args = ap.parse_args()

    from serving.local import local_app
    from serving.modelprep.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="rmn-bench-cluster-"))
    model = build_tiny_model(work / "model")
    results: dict[str, Any] = {
        "engine": "vLLM (CPU), tiny random model",
        "replicas": {"router": 2, "engine": 2},
        "fairness_by_reserve_slots": {},
    }
    for i, reserve in enumerate(int(r) for r in args.reserve.split(",")):
        cfg = _config(model, work / f"app{reserve}", args.metered_limit, reserve)
        with local_app(cfg, num_cpus=4) as url:
            if i == 0:
                results["rate_limit"] = _rate_limit(url, args.metered_limit)
            reps = [_fairness(url, args.flood, args.light) for _ in range(args.reps)]
            ratios = [r["ratio"] for r in reps]
            results["fairness_by_reserve_slots"][str(reserve)] = {
                "ratio_median": statistics.median(ratios),
                "ratio_per_rep": ratios,
                "within_2x": statistics.median(ratios) <= 2,
                "reps": reps,
            }
    print(results)
    write_results(Path(__file__).parent / "results" / "cluster.json", results)


if __name__ == "__main__":
    main()
