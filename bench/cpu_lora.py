"""CPU LoRA kernels, in-process on the demo model: vLLM's per-token ops vs the grouped path, in one run.

One vLLM ``LLM`` (bf16, eager, prefix caching off, ``max_loras`` 8, ``max_cpu_loras`` 64 by default, ``max_lora_rank`` 64)
generates the same batches with each CPU path (``grouped``, vLLM's own masked ops), the
order alternated, each load repeated ``--reps`` times, and counts the sequences that are identical token for token: base model; 4 single demo adapters mixed; 4 demo stacks (4 adapters each, composed
exactly); 32 distinct compositions. A second engine restricted to the modules the adapters target
(``lora_target_modules=["qkv_proj"]``) runs the grouped path again. Writes ``bench/results/cpu-lora.json``.

    python -m bench.cpu_lora [--prompts 32] [--tokens 32] [--reps 2] [--max-loras 8] [--max-cpu-loras 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.record import write_results

QUESTIONS = [
    "How should I promote coffee next month in our stores and online?",
    "Write a short ad idea for cereal that a busy parent would notice.",
    "What is a good media plan for shampoo with a small budget this quarter?",
    "Give me one tip to sell more orange juice at the retailer's app.",
]


STACKS = [
    "brand_brewmax*0.7+task_creative*0.5",
    "retail_media*0.3+bigmart_retail*0.3+brand_crunchy*0.5+task_creative*0.5",
    "retail_media*0.3+acme_retail*0.3+brand_brewmax*0.5+task_planning*0.5",
    "retail_media*0.3+bigmart_retail*0.3+brand_brewmax*0.5+task_harmonize*0.5",
]


def compositions(n: int) -> list[str]:
    """``n`` distinct 4-adapter stacks over the demo adapters (one per layer, weights varied)."""
    import itertools

    combos = itertools.product(
        ("0.2", "0.3", "0.4", "0.5"),
        ("acme_retail", "bigmart_retail"),
        ("brand_brewmax", "brand_crunchy"),
        ("task_planning", "task_creative", "task_harmonize"),
    )  # 48 distinct stacks
    return [f"retail_media*{w}+{r}*0.3+{m}*0.5+{t}*0.5" for w, r, m, t in itertools.islice(combos, n)]


def demo_llm(max_loras: int = 8, max_cpu_loras: int = 64, **extra: Any) -> Any:
    """The benchmarks' in-process vLLM ``LLM`` on the demo model: bf16, eager, prefix caching off, LoRA up to
    rank 64 (``VLLM_ENABLE_V1_MULTIPROCESSING`` must be "0" before vLLM is imported)."""
    from vllm import LLM

    from serving.demo.defaults import demo_model_dir

    return LLM(
        model=str(demo_model_dir()),
        dtype="bfloat16",
        enable_lora=True,
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        max_lora_rank=64,
        kv_cache_memory_bytes=1 << 30,
        max_model_len=512,
        enforce_eager=True,
        enable_prefix_caching=False,
        seed=0,
        **extra,
    )


def demo_loads(prompts: int, n_compositions: int = 32) -> dict[str, list[Any] | None]:
    """One ``LoRARequest`` per prompt for each load, adapters taken in turn: base model (None); 4 single demo
    adapters; 4 demo stacks; ``n_compositions`` distinct compositions (stacks composed exactly, cached)."""
    from vllm.lora.request import LoRARequest

    from adapters import AdapterRegistry
    from adapters.cache import CompositeCache, resolve
    from adapters.stack import parse_stack
    from serving.demo.defaults import home

    registry = AdapterRegistry(home() / "adapters", max_rank=64)
    cache = CompositeCache(Path(tempfile.mkdtemp(prefix="bench-cpu-lora-")), registry, max_rank=64)
    singles = [
        registry.path(a, registry.get(a).version)
        for a in ("retail_media", "acme_retail", "brand_brewmax", "task_planning")
    ]
    stacks = [cache.get_or_build(resolve(registry, parse_stack(s))) for s in STACKS]
    many = [cache.get_or_build(resolve(registry, parse_stack(s))) for s in compositions(n_compositions)]
    ids = iter(range(1, 10**6))

    def lora_set(paths: list[Path]) -> list[Any]:
        reqs = [LoRARequest(f"l{next(ids)}", next(ids), str(p)) for p in paths]
        return [reqs[i % len(reqs)] for i in range(prompts)]

    return {
        "base": None,
        "4 single adapters": lora_set(singles),
        "4 stacks": lora_set(stacks),
        f"{n_compositions} compositions": lora_set(many),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-loras", type=int, default=8, help="adapter slots per step")
    ap.add_argument("--max-cpu-loras", type=int, default=64, help="adapters kept in CPU memory")
    args = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import SamplingParams

    from serving.engines import cpu_lora

    def engine(**extra: Any) -> Any:
        return demo_llm(args.max_loras, args.max_cpu_loras, **extra)

    prompts = [QUESTIONS[i % len(QUESTIONS)] + f" (request {i})" for i in range(args.prompts)]
    sp = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    loads = demo_loads(args.prompts)

    def timed(llm: Any, loras: list[Any] | None, n: int = args.prompts) -> tuple[float, list[list[int]]]:
        t = time.perf_counter()
        outs = llm.generate(prompts[:n], sp, lora_request=loras[:n] if loras else None, use_tqdm=False)
        seconds = time.perf_counter() - t
        return n * args.tokens / seconds, [list(o.outputs[0].token_ids) for o in outs]

    llm = engine()
    for loras in loads.values():  # warm-up: first loads of every adapter, kernels
        timed(llm, loras, n=min(8, args.prompts))
    paths = ["grouped", "vllm"]
    results: dict[str, dict[str, list[float]]] = {name: {p: [] for p in paths} for name in loads}
    same: dict[str, list[int]] = {name: [] for name in loads}
    for rep in range(args.reps):
        order = paths if rep % 2 == 0 else paths[::-1]
        for name, loras in loads.items():
            tokens: dict[str, list[list[int]]] = {}
            for path in order:
                if path == "vllm":
                    cpu_lora.uninstall()
                else:
                    cpu_lora.install()
                tps, tokens[path] = timed(llm, loras)
                results[name][path].append(round(tps, 1))
            # sequences identical to vLLM's ops, token for token
            same[name].append(sum(a == b for a, b in zip(tokens["grouped"], tokens["vllm"], strict=True)))
            print(f"rep {rep} {name}: {results[name]} identical sequences {same[name]}", flush=True)
    cpu_lora.install()
    from serving.engines.cpu_lora.wrapper import worker_reports

    verdicts = [r for worker in llm.collective_rpc(worker_reports) for r in worker]
    del llm
    restricted = engine(lora_target_modules=["qkv_proj"])
    for loras in loads.values():
        timed(restricted, loras, n=min(8, args.prompts))
    targeted = {}
    for name, loras in loads.items():
        targeted[name] = [round(timed(restricted, loras)[0], 1) for _ in range(args.reps)]
        print(f"qkv only {name}: {targeted[name]}", flush=True)

    med = {name: {p: statistics.median(v) for p, v in r.items()} for name, r in results.items()}
    out = {
        "model": "SmolLM2-135M-Instruct (demo), bf16, eager, prefix caching off",
        "load": f"{args.prompts} prompts (~16 tokens) x {args.tokens} output tokens, ignore_eos, temperature 0, reps {args.reps}",
        "engine": {"max_loras": args.max_loras, "max_cpu_loras": args.max_cpu_loras, "max_lora_rank": 64},
        "tokens_per_s": results,
        "tokens_per_s_qkv_only_grouped": targeted,
        "median_tokens_per_s": med,
        "ratio_vs_base_note": "each path against its own base-model run on the same LoRA-enabled engine "
        "(vLLM's ops also slow the base model there: they run for rows without an adapter)",
        "ratio_vs_base": {
            name: {
                "vllm_ops": round(m["vllm"] / med["base"]["vllm"], 3),
                "grouped": round(m["grouped"] / med["base"]["grouped"], 3),
                "grouped_qkv_only": round(
                    statistics.median(targeted[name]) / statistics.median(targeted["base"]), 3
                ),
            }
            for name, m in med.items()
        },
        "grouped_over_vllm_ops": {name: round(m["grouped"] / m["vllm"], 2) for name, m in med.items()},
        "sequences_identical_to_vllm_ops": {
            name: " ".join(f"{n}/{args.prompts}" for n in counts) for name, counts in same.items()
        },
        "probe_verdicts": verdicts,  # per layer shape on this CPU: grouped arithmetic or vLLM's ops
    }
    print(write_results("bench/results/cpu-lora.json", out).read_text())


if __name__ == "__main__":
    main()
