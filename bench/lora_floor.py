"""How far the CPU LoRA arithmetic is from its floor, in-process on the demo model, in one run.

One vLLM ``LLM`` (:func:`bench.cpu_lora.demo_llm`, ``max_num_seqs`` 8: the load of ``bench/peer.py``) generates
each LoRA load with four arithmetics behind the same grouped wrapper, order alternated, ``--reps`` times:

- ``grouped``: the product's default (``engine.cpu_lora: grouped``: vLLM's bits where the probe finds them);
- ``compact``: the product's opt-in (``engine.cpu_lora: compact``: bounded error, vLLM's packed oneDNN GEMM);
- ``none``: every LoRA layer call returns at once (the adapters add nothing): what vLLM's LoRA layers, the
  wrapper and the batch bookkeeping cost without any arithmetic, i.e. the ceiling for any LoRA arithmetic;
- ``minimal``: per layer call, a rank-16 LoRA of random weights through vLLM's packed oneDNN GEMM (the one its
  CPU linear layers use), two GEMMs and one add over all tokens (no per-slot masking, no exactness): about
  the least arithmetic a LoRA layer needs with the GEMMs this engine has. Its text is garbage; its time is not.

Besides tokens/s (and the ratio to the base model on the same engine) it counts tokens per second of the engine
thread's CPU time (``time.thread_time``: the engine runs in this thread, one compute thread; on the development
VM it moved with wall time, a busy host's steal included) and times every engine step, every adapter activation
(``_set_active_loras``: slot loads) and every ``add_lora_linear`` call (perf_counter around them). Writes
``bench/results/lora-floor.json``.

    python -m bench.lora_floor [--prompts 64] [--tokens 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import time
from typing import Any

from bench.record import write_results

ARITHMETICS = ("grouped", "compact", "none", "minimal")
MINIMAL_RANK = 16


class Meter:
    """Wall time and calls of the methods it wraps, cleared per timed run."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def wrap(self, cls: Any, name: str) -> None:
        method = getattr(cls, name)

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t
                self.calls[name] += 1

        setattr(cls, name, timed)

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def install_arithmetics() -> list[str]:
    """Route ``GroupedLoRA.linear`` through the arithmetic named in the returned one-item list (set it
    before each run, and the process-wide CPU LoRA mode to match): the product's method for ``grouped`` and
    ``compact``, nothing for ``none``, :data:`MINIMAL_RANK` packed GEMMs for ``minimal``."""
    import torch
    from vllm import _custom_ops as ops

    from serving.engines.cpu_lora.grouped import GroupedLoRA

    product = GroupedLoRA.linear
    current = ["grouped"]
    minimal: dict[int, tuple[Any, Any]] = {}

    def linear(self: Any, y: Any, x: Any, indices: Any, lora_a: Any, *args: Any, **kwargs: Any) -> bool:
        arithmetic = current[0]
        if arithmetic in ("grouped", "compact"):
            return bool(product(self, y, x, indices, lora_a, *args, **kwargs))
        if arithmetic == "minimal":
            x2, y2 = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
            gemms = minimal.get(id(lora_a[0]))
            if gemms is None:
                g = torch.Generator().manual_seed(len(minimal))
                a = torch.randn(MINIMAL_RANK, x2.shape[-1], generator=g).div(100).to(x2.dtype)
                b = torch.randn(y2.shape[-1], MINIMAL_RANK, generator=g).div(100).to(y2.dtype)
                gemms = minimal[id(lora_a[0])] = (
                    ops.create_onednn_mm(a.t(), 32),
                    ops.create_onednn_mm(b.t(), 32),
                )
            y2 += ops.onednn_mm(gemms[1], ops.onednn_mm(gemms[0], x2, None), None)
        return True

    GroupedLoRA.linear = linear  # type: ignore[method-assign]
    return current


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import SamplingParams
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from bench.cpu_lora import QUESTIONS, demo_llm, demo_loads
    from serving.engines import cpu_lora
    from serving.engines.cpu_lora.wrapper import GroupedPunicaWrapperCPU

    cpu_lora.set_mode("grouped")
    meter = Meter()
    meter.wrap(GroupedPunicaWrapperCPU, "add_lora_linear")
    meter.wrap(GPUModelRunner, "execute_model")
    meter.wrap(GPUModelRunner, "_set_active_loras")
    current = install_arithmetics()
    llm = demo_llm(max_num_seqs=8)
    prompts = [QUESTIONS[i % len(QUESTIONS)] + f" (request {i})" for i in range(args.prompts)]
    sp = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    loads = demo_loads(args.prompts)
    runs = [("base", "grouped")] + [(name, a) for name in loads if name != "base" for a in ARITHMETICS]

    def run(name: str, arithmetic: str, n: int) -> dict[str, float]:
        current[0] = arithmetic
        cpu_lora.set_mode("compact" if arithmetic == "compact" else "grouped")
        meter.clear()
        loras = loads[name]
        t, cpu = time.perf_counter(), time.thread_time()
        llm.generate(prompts[:n], sp, lora_request=loras[:n] if loras else None, use_tqdm=False)
        seconds, cpu = time.perf_counter() - t, time.thread_time() - cpu
        steps, calls = meter.calls["execute_model"], meter.calls["add_lora_linear"]
        return {
            "tokens_per_s": round(n * args.tokens / seconds, 1),
            "tokens_per_cpu_s": round(n * args.tokens / cpu, 1),
            "activate_ms_per_step": round(meter.seconds["_set_active_loras"] / max(steps, 1) * 1e3, 2),
            "step_ms": round(meter.seconds["execute_model"] / max(steps, 1) * 1e3, 2),
            "lora_ms_per_step": round(meter.seconds["add_lora_linear"] / max(steps, 1) * 1e3, 2),
            "lora_us_per_call": round(meter.seconds["add_lora_linear"] / max(calls, 1) * 1e6, 1),
            "lora_calls_per_step": round(calls / max(steps, 1), 1),
        }

    for name, arithmetic in runs:  # warm-up: adapters loaded, layer shapes probed, GEMMs packed
        run(name, arithmetic, min(16, args.prompts))
    reps: dict[str, dict[str, list[dict[str, float]]]] = collections.defaultdict(dict)
    for rep in range(args.reps):
        for name, arithmetic in runs if rep % 2 == 0 else runs[::-1]:
            r = run(name, arithmetic, args.prompts)
            reps[name].setdefault(arithmetic, []).append(r)
            print(f"rep {rep} {name} {arithmetic}: {r}", flush=True)
    cpu_lora.set_mode("grouped")

    def median(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 2)

    base = median(reps["base"]["grouped"], "tokens_per_s")
    base_cpu = median(reps["base"]["grouped"], "tokens_per_cpu_s")
    medians = {
        name: {
            a: {key: median(rows, key) for key in rows[0]}
            | {
                "over_base": round(median(rows, "tokens_per_s") / base, 3),
                "over_base_cpu": round(median(rows, "tokens_per_cpu_s") / base_cpu, 3),
            }
            for a, rows in by.items()
        }
        for name, by in reps.items()
    }
    out = {
        "model": "SmolLM2-135M-Instruct (demo), bf16, eager, prefix caching off, max_num_seqs 8",
        "load": f"{args.prompts} prompts x {args.tokens} output tokens, ignore_eos, temperature 0, {args.reps} reps, "
        "order alternated",
        "arithmetics": {
            "grouped": "the default (vLLM's bits where the probe finds them)",
            "compact": "the opt-in (bounded error, packed oneDNN GEMMs)",
            "none": "LoRA layers add nothing (no arithmetic): the ceiling for any arithmetic",
            "minimal": f"a rank-{MINIMAL_RANK} LoRA of random weights per layer, two packed oneDNN GEMMs + add",
        },
        "median": medians,
        "reps": reps,
    }
    print(write_results("bench/results/lora-floor.json", out).read_text())


if __name__ == "__main__":
    main()
