"""CPU LoRA where the probe does not find vLLM's bits: ``exact`` vs ``grouped`` under oneDNN/MKL ISA caps.

A CPU whose oneDNN and MKL sum in another order than on the development machine (Intel AMX, AVX-512 without
BF16, AVX2) is stood in for by ``ONEDNN_MAX_CPU_ISA`` (each cap in a process of its own: oneDNN reads it
once). Per cap, one in-process vLLM ``LLM`` on the demo model (bf16, eager, ``max_loras`` 8, ``max_lora_rank``
64) generates the same batches in both modes, alternated, ``--reps`` times: ``exact`` (the grouped arithmetic
where the probe found vLLM's bits, vLLM's per-token ops elsewhere) and ``grouped`` (the default: the grouped
arithmetic also where its bits differ but its error against float64 is within 2x vLLM's own). Reports tokens/s
per load, LoRA / base, the layer verdicts and how many greedy sequences ``grouped`` keeps token for token
identical to ``exact`` (= vLLM's ops). Writes ``bench/results/cpu-lora-isa.json``.

    python -m bench.cpu_lora_isa [--caps none AVX512_CORE AVX2] [--prompts 16] [--tokens 32] [--reps 2] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.record import write_results

MODES = ("exact", "grouped")


def _one_cap(prompts_n: int, tokens: int, reps: int) -> dict[str, Any]:
    """Run in the capped process: every load in both modes; returns the results as a dict."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import SamplingParams

    from bench.cpu_lora import QUESTIONS, demo_llm, demo_loads
    from serving.engines import cpu_lora
    from serving.engines.cpu_lora.wrapper import worker_probe

    loads = demo_loads(prompts_n, n_compositions=16)
    cpu_lora.install()
    llm = demo_llm()
    (report,) = [r for worker in llm.collective_rpc(worker_probe) for r in worker]
    prompts = [QUESTIONS[i % len(QUESTIONS)] + f" (request {i})" for i in range(prompts_n)]
    sp = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)

    def timed(loras: list[Any] | None, n: int = prompts_n) -> tuple[float, list[list[int]]]:
        t = time.perf_counter()
        outs = llm.generate(prompts[:n], sp, lora_request=loras[:n] if loras else None, use_tqdm=False)
        return n * tokens / (time.perf_counter() - t), [list(o.outputs[0].token_ids) for o in outs]

    for mode in MODES:  # warm-up: first loads of every adapter, kernels, the probe of lm_head
        cpu_lora.set_mode(mode)
        for loras in loads.values():
            timed(loras, n=min(8, prompts_n))
    runs: dict[str, dict[str, list[float]]] = {name: {m: [] for m in MODES} for name in loads}
    same: dict[str, list[int]] = {name: [] for name in loads}
    for rep in range(reps):
        for name, loras in loads.items():
            seqs = {}
            for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                cpu_lora.set_mode(mode)
                tps, seqs[mode] = timed(loras)
                runs[name][mode].append(round(tps, 1))
            same[name].append(sum(a == b for a, b in zip(seqs["grouped"], seqs["exact"], strict=True)))
            print(f"rep {rep} {name}: {runs[name]} identical {same[name]}", file=sys.stderr, flush=True)
    cpu_lora.install()
    med = {name: {m: statistics.median(v) for m, v in r.items()} for name, r in runs.items()}
    layers = report["layers"]
    return {
        "machine": report["machine"],
        "layer_shapes": {
            "bit_identical": sum(layer["identical"] for layer in layers),
            "bounded_not_identical": sum(layer["bounded"] and not layer["identical"] for layer in layers),
            "over_the_bound": sum(not layer["bounded"] for layer in layers),
            "max_error_over_vllms": round(
                max(layer["fused_error"] / layer["vllm_error"] for layer in layers if layer["vllm_error"]), 3
            ),
        },
        "tokens_per_s": runs,
        "median_tokens_per_s": med,
        "lora_over_base": {
            m: {n: round(med[n][m] / med["base"][m], 3) for n in med if n != "base"} for m in MODES
        },
        "grouped_over_exact": {n: round(v["grouped"] / v["exact"], 2) for n, v in med.items()},
        "greedy_sequences_identical_to_exact": {
            n: " ".join(f"{k}/{prompts_n}" for k in v) for n, v in same.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--caps", nargs="+", default=["none", "AVX512_CORE", "AVX2"], help="ONEDNN_MAX_CPU_ISA values"
    )
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="bench/results/cpu-lora-isa.json", help="results file")
    ap.add_argument("--one-cap", action="store_true", help=argparse.SUPPRESS)  # the capped child process
    args = ap.parse_args()
    if args.one_cap:
        print(json.dumps(_one_cap(args.prompts, args.tokens, args.reps)))
        return
    by_cap: dict[str, Any] = {}
    for cap in args.caps:
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if cap != "none":
            env["ONEDNN_MAX_CPU_ISA"] = cap
        cmd = [sys.executable, "-m", "bench.cpu_lora_isa", "--one-cap", "--prompts", str(args.prompts)]
        cmd += ["--tokens", str(args.tokens), "--reps", str(args.reps)]
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        by_cap[cap] = json.loads(done.stdout.strip().splitlines()[-1])
        print(cap, json.dumps(by_cap[cap]["grouped_over_exact"]), flush=True)
    out = {
        "model": "SmolLM2-135M-Instruct (demo), bf16, eager, prefix caching off, in-process LLM",
        "load": f"{args.prompts} prompts x {args.tokens} output tokens, ignore_eos, temperature 0, "
        f"reps {args.reps}, modes alternated",
        "modes": {
            "exact": "vLLM's bits: the grouped arithmetic where the probe found them, vLLM's ops elsewhere",
            "grouped": "the default: the grouped arithmetic also where its error is within 2x vLLM's own",
        },
        "by_onednn_max_cpu_isa": by_cap,
    }
    print(write_results(args.out, out).read_text())


if __name__ == "__main__":
    main()
