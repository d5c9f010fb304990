"""Scale benchmark: >= 1,000 distinct compositions through the HTTP path for a long run, memory sampled.

A registry of 60 adapters (15 per layer: industry, retailer, manufacturer, task; rank 2 each, tiny model),
``--compositions`` distinct 4-adapter stacks (one per layer). ``--clients`` closed-loop clients send 4-token
completions for ``--minutes``: every other request sweeps the compositions in order (so each is served), the
others draw from a Zipf(``--zipf``) popularity. Every ``--every`` seconds: RSS of the router and of the
engine replica (with its vLLM engine-core child), the composite cache's bytes on disk, the engine's loads,
evictions and cache hits/misses. Writes ``bench/results/scale.json`` (series + summary: RSS drift after
warm-up, disk vs its bound, hit ratio, p50/p99) and ``bench/results/scale.png`` (RSS and latency over time).
Usage: ``python -m bench.scale [--minutes 10] [--compositions 1100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_results

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
KEY = "bench-key"
LAYERS = ["industry", "retailer", "manufacturer", "task"]


def _prometheus_series(url: str) -> tuple[int, int]:
    """(series the node's Prometheus endpoint exports, those labelled with a model id); (-1, -1) unreachable."""
    import httpx

    try:
        text = httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return -1, -1
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return len(lines), sum(1 for ln in lines if "model_id=" in ln)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(q * (len(xs) - 1)))], 4) if xs else 0.0


def _rss(marker: str) -> int:
    """Resident bytes of the Ray worker whose title contains ``marker``, with its children (vLLM's
    engine core runs in a child process of the engine replica)."""
    import psutil

    total = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                total += p.memory_info().rss
                total += sum(c.memory_info().rss for c in p.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def _dir_bytes(root: Path, published_only: bool = False) -> int:
    """Bytes under ``root`` (builds come and go while we walk: vanished files count 0); with
    ``published_only``, only published composites (not builds in progress, not lock files)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if published_only and (rel == "." or rel.startswith(".")):
            continue
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _plot(series: list[dict[str, Any]], latencies: list[tuple[float, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [s["t"] for s in series]
    a.plot(t, [s["router_rss_mb"] for s in series], label="router RSS (MB)")
    a.plot(t, [s["engine_rss_mb"] for s in series], label="engine replica + vLLM core RSS (MB)")
    a.plot(t, [s["cache_mb"] for s in series], label="composite cache on disk (MB)")
    a.set_ylabel("MB")
    a.legend(loc="upper left", fontsize=8)
    a.set_title("bench/scale: distinct compositions through the HTTP path")
    b.scatter([x for x, _ in latencies], [y for _, y in latencies], s=2, alpha=0.4)
    b.set_yscale("log")
    b.set_ylabel("request latency (s)")
    b.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--compositions", type=int, default=1100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--cache-mb", type=int, default=8, help="composite cache bound (MB)")
    ap.add_argument("--out", default="bench/results/scale.json", help="results JSON (the PNG beside it)")
    args = ap.parse_args()

    import httpx
    from ray import serve

    from adapters import AdapterRegistry
    from adapters.synthetic import make_random_adapter
    from federation.tenants import hash_key
    from serving.config import AppConfig
    from serving.local import APP_NAME, local_app
    from serving.modelprep.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="rmn-bench-scale-"))
    model_dir = build_tiny_model(work / "model")
    reg = AdapterRegistry(work / "registry", max_rank=64)
    names: dict[str, list[str]] = {k: [] for k in LAYERS}
    for li, kind in enumerate(LAYERS):
        for j in range(15):
            src = make_random_adapter(
                model_dir, work / f"src-{kind}-{j}", seed=1000 + 100 * li + j, rank=2, scale=0.05
            )
            reg.register(
                src, id=f"{kind}_{j}", kind=kind, owner="bench", base_model="tiny", base_model_revision="x"
            )
            names[kind].append(f"{kind}_{j}")
    rng = random.Random(7)
    stacks: list[str] = []
    seen: set[str] = set()
    while len(stacks) < args.compositions:
        text = "+".join(rng.choice(names[k]) for k in LAYERS)
        if text not in seen:
            seen.add(text)
            stacks.append(text)
    weights = [1.0 / (i + 1) ** args.zipf for i in range(len(stacks))]
    cache_dir = work / "cache"
    cache_bound = args.cache_mb << 20
    cfg = AppConfig.model_validate(
        {
            "model": {"path": str(model_dir)},
            "adapters": {
                "root": str(work / "registry"),
                "cache_root": str(cache_dir),
                "cache_max_bytes": cache_bound,
            },
            "engine": {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 8, "max_model_len": 256},
            "engine_deployment": {
                "num_replicas": 1,
                "num_cpus": 1,
                "max_ongoing_requests": 16,
                "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            },
            "http": {"request_timeout_s": 60},
            "federation": {
                "tenants": [
                    {
                        "id": "bench",
                        "role": "admin",
                        "api_key_sha256": hash_key(KEY),
                        "rate_limit_per_minute": 10**7,
                    }
                ],
                "policy": {"industry_adapter": "industry_0"},
            },
        }
    )
    headers = {"Authorization": f"Bearer {KEY}"}
    records: list[tuple[float, float, int, str]] = []  # (t, latency, status, stack)
    series: list[dict[str, Any]] = []

    metrics_url = f"http://127.0.0.1:{cfg.http.metrics_port}/metrics"
    with local_app(cfg, num_cpus=4) as url:
        engine = serve.get_deployment_handle("engine", APP_NAME)
        t0 = time.monotonic()
        stop = t0 + args.minutes * 60
        sweep = iter(range(10**9))

        def pick(n: int) -> str:
            if n % 2 == 0:
                return stacks[next(sweep) % len(stacks)]
            return rng.choices(stacks, weights)[0]

        async def client() -> None:
            async with httpx.AsyncClient(timeout=120, headers=headers) as c:
                n = 0
                while time.monotonic() < stop:
                    stack = pick(n)
                    n += 1
                    body = {"model": f"base:{stack}", "prompt": "coffee", "max_tokens": 4, "temperature": 0}
                    t = time.monotonic()
                    try:
                        r = await c.post(f"{url}/v1/completions", json=body)
                        status = r.status_code
                    except Exception:
                        status = 0
                    records.append((t - t0, time.monotonic() - t, status, stack))

        async def sampler() -> None:
            while time.monotonic() < stop:
                stats = await asyncio.to_thread(lambda: engine.stats.remote().result(timeout_s=60))
                series_total, series_model = await asyncio.to_thread(_prometheus_series, metrics_url)
                cache = stats["composite_cache"]
                series.append(
                    {
                        "t": round(time.monotonic() - t0, 1),
                        "router_rss_mb": round(_rss(f"ServeReplica:{APP_NAME}:router") / 2**20, 1),
                        "engine_rss_mb": round(_rss(f"ServeReplica:{APP_NAME}:engine") / 2**20, 1),
                        "cache_mb": round(_dir_bytes(cache_dir) / 2**20, 2),
                        "cache_published_mb": round(_dir_bytes(cache_dir, published_only=True) / 2**20, 2),
                        "requests": len(records),
                        "distinct_served": len({s for _, _, code, s in records if code == 200}),
                        "loads": stats["loads"],
                        "evictions": stats["evictions"],
                        "cache_hits": cache["hits"],
                        "cache_misses": cache["misses"],
                        "locks": cache.get("locks"),
                        "log_records_held": stats.get("log_records_held"),
                        "inflight_keys": cache.get("inflight_keys", stats.get("inflight_keys")),
                        "prometheus_series": series_total,
                        "prometheus_series_with_model_id": series_model,
                    }
                )
                print(series[-1], flush=True)
                await asyncio.sleep(args.every)

        async def run() -> None:
            await asyncio.gather(sampler(), *(client() for _ in range(args.clients)))

        asyncio.run(run())
        final = engine.stats.remote().result(timeout_s=60)

    ok = [lat for _, lat, code, _ in records if code == 200]
    warm = [s for s in series if s["t"] >= series[-1]["t"] * 0.2]  # after the first fifth: warm-up

    def drift(key: str) -> float:
        vals = [s[key] for s in warm]
        mean = statistics.mean(vals)
        return round(max(abs(v - mean) for v in vals) / mean, 4) if mean else 0.0

    def slope(key: str) -> float:
        """Least-squares growth after warm-up, MB per minute (flat: about 0)."""
        xs, ys = [s["t"] / 60 for s in warm], [s[key] for s in warm]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den, 3) if den else 0.0

    cache = final["composite_cache"]
    summary = {
        "requests": len(records),
        "ok": len(ok),
        "statuses": {str(k): sum(1 for r in records if r[2] == k) for k in sorted({r[2] for r in records})},
        "distinct_compositions_served": len({s for _, _, code, s in records if code == 200}),
        "latency_s": {"p50": _pct(ok, 0.5), "p99": _pct(ok, 0.99)},
        "router_rss_mb": {
            "warm_min": min(s["router_rss_mb"] for s in warm),
            "warm_max": max(s["router_rss_mb"] for s in warm),
        },
        "engine_rss_mb": {
            "warm_min": min(s["engine_rss_mb"] for s in warm),
            "warm_max": max(s["engine_rss_mb"] for s in warm),
        },
        "router_rss_max_drift_from_mean": drift("router_rss_mb"),
        "engine_rss_max_drift_from_mean": drift("engine_rss_mb"),
        "router_rss_mb_per_minute_after_warmup": slope("router_rss_mb"),
        "engine_rss_mb_per_minute_after_warmup": slope("engine_rss_mb"),
        "cache_mb_max": max(s["cache_mb"] for s in series),
        "cache_published_mb_max": max(s["cache_published_mb"] for s in series),
        "cache_bound_mb": args.cache_mb,
        "loads": final["loads"],
        "evictions": final["evictions"],
        "cache_hit_ratio": round(cache["hits"] / max(cache["hits"] + cache["misses"], 1), 4),
        "locks_at_end": final["composite_cache"].get("locks"),
        "prometheus_series": {
            "warm_min": min(s["prometheus_series"] for s in warm),
            "warm_max": max(s["prometheus_series"] for s in warm),
            "with_model_id_max": max(s["prometheus_series_with_model_id"] for s in series),
        },
    }
    print(summary, flush=True)
    out = Path(args.out)
    write_results(
        out,
        {
            "setup": {
                "model": "tiny (random)",
                "adapters": 60,
                "compositions": len(stacks),
                "clients": args.clients,
                "minutes": args.minutes,
                "zipf": args.zipf,
                "max_cpu_loras": 16,
                "max_loras": 4,
            },
            "summary": summary,
            "series": series,
        },
    )
    _plot(series, [(t, lat) for t, lat, code, _ in records if code == 200], out.with_suffix(".png"))


if __name__ == "__main__":
    main()
