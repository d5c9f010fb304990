"""Adapter benchmark: compose time (cold / cached) vs components and rank, engine load time of a
composite, composite-cache hit ratio under a skewed (Zipf) request mix.

Writes ``bench/results/adapters.json``. Usage: ``python -m bench.adapters [--model demo|tiny]``.
Targets (issue #3): cold <= 100 ms for 4 components of rank <= 16 on the demo model; cached <= 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_results


def _median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tiny", "demo"], default="demo")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="bench/results/adapters.json")
    args = ap.parse_args()

    import torch  # noqa: F401  (imported once up front: an engine replica has it loaded already)

    from adapters import AdapterRegistry
    from adapters.cache import CompositeCache, resolve
    from adapters.stack import StackPart
    from adapters.synthetic import make_random_adapter

    work = Path(tempfile.mkdtemp(prefix="rmn-bench-adapters-"))
    if args.model == "demo":
        from serving.demo.defaults import demo_model_dir
        from serving.modelprep.smollm2 import prepare_smollm2

        model_dir = prepare_smollm2(demo_model_dir())
    else:
        from serving.modelprep.tiny import build_tiny_model

        model_dir = build_tiny_model(work / "model")
    reg = AdapterRegistry(work / "registry", max_rank=64)
    ranks = [8, 16, 32, 64]
    for r in ranks:
        for i in range(4):
            src = make_random_adapter(model_dir, work / f"src-r{r}-{i}", seed=r * 10 + i, rank=r, alpha=r)
            reg.register(
                src,
                id=f"r{r}-{i}",
                kind="task",
                owner="bench",
                base_model=args.model,
                base_model_revision="bench",
            )
    results: dict[str, Any] = {"model": args.model, "target_modules": ["q_proj", "v_proj"], "compose": []}
    for r, n in itertools.product(ranks, [1, 2, 3, 4]):
        if r * n > 64:
            continue
        parts = tuple(StackPart(f"r{r}-{i}", "1", 0.5 if n > 1 else 1.0) for i in range(n))
        cold, hot = [], []
        for rep in range(args.reps):
            cache = CompositeCache(work / f"cache-{r}-{n}-{rep}", reg, max_rank=64)
            t = time.perf_counter()
            cache.get_or_build(resolve(reg, parts))
            cold.append(time.perf_counter() - t)
            for _ in range(20):
                t = time.perf_counter()
                cache.get_or_build(resolve(reg, parts))
                hot.append(time.perf_counter() - t)
        row = {
            "rank_each": r,
            "components": n,
            "total_rank": r * n,
            "cold_ms": _median_ms(cold),
            "cached_ms": _median_ms(hot),
        }
        results["compose"].append(row)
        print(row, flush=True)

    # cache hit ratio: 40 distinct stacks, Zipf(1.1) popularity, cache bounded to ~8 composites
    ids = [f"r8-{i}" for i in range(4)] + [f"r16-{i}" for i in range(4)]
    stacks = [tuple(StackPart(a, "1", 1.0) for a in combo) for combo in itertools.permutations(ids, 2)][:40]
    probe = CompositeCache(work / "probe", reg, max_rank=64)
    one = sum(f.stat().st_size for f in probe.get_or_build(resolve(reg, stacks[0])).iterdir())
    cache = CompositeCache(work / "zipf", reg, max_rank=64, max_bytes=8 * one + one // 2)
    rng = random.Random(0)
    weights = [1 / (k + 1) ** 1.1 for k in range(len(stacks))]
    for s in rng.choices(stacks, weights=weights, k=1000):
        cache.get_or_build(resolve(reg, s))
    results["cache_zipf"] = {
        "distinct_stacks": len(stacks),
        "requests": 1000,
        "capacity_composites": 8,
        "hits": cache.stats.hits,
        "misses": cache.stats.misses,
        "hit_ratio": round(cache.stats.hits / 1000, 3),
    }
    print(results["cache_zipf"], flush=True)

    # engine load time of composites (vLLM add_lora), rank 16 and 64
    from serving.config import EngineConfig, ModelConfig
    from serving.engines.vllm_engine import VLLMEngine

    async def load_times() -> dict[str, float]:
        eng = VLLMEngine(
            ModelConfig(path=model_dir), EngineConfig(max_lora_rank=64, max_loras=2, max_cpu_loras=8)
        )
        await eng.start()
        out = {}
        for label, parts in {
            "2x8_rank16": tuple(StackPart(f"r8-{i}", "1", 0.5) for i in range(2)),
            "4x16_rank64": tuple(StackPart(f"r16-{i}", "1", 0.5) for i in range(4)),
        }.items():
            path = CompositeCache(work / f"load-{label}", reg, max_rank=64).get_or_build(resolve(reg, parts))
            t = time.perf_counter()
            await eng.add_adapter(f"base:{label}", str(path))
            out[label] = round((time.perf_counter() - t) * 1000, 1)
        eng.shutdown()
        return out

    results["engine_load_ms"] = asyncio.run(load_times())
    print(results["engine_load_ms"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
