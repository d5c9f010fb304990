"""rmn-lora against vLLM's own OpenAI server, same engine settings, same adapters, same load, one run.

Each side is started in turn (``--reps`` times, the order alternated) from this venv on the demo model:
- the peer: stock vLLM (``python -m vllm.entrypoints.launchers.api_server.entry``) with this project's plugin
  excluded through vLLM's ``VLLM_PLUGINS`` allowlist; adapters given as ``--lora-modules`` (stacks and
  compositions as pre-built composites, composed by this project's exact composer);
- ``rmn serve`` with an open API (no tenants) over the demo registry, composing stacks on demand.
Loads: base model; 4 single adapters; 4 stacks of 4 adapters; 32 distinct compositions. Each load is
``--requests`` chat requests, ``--concurrency`` at a time, ``--tokens`` output tokens (``ignore_eos``,
temperature 0). Writes ``bench/results/peer.json`` with both sides and the ratios rmn/vLLM and LoRA/base.

    python -m bench.peer [--requests 64] [--concurrency 8] [--tokens 32] [--reps 2] [--max-loras 8]
                         [--max-cpu-loras 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.record import write_results
from tests.ports import free_port

QUESTION = "How should I promote coffee next month in our stores and online?"


def _prepare(work: Path) -> dict[str, dict[str, Path]]:
    """Per load: served name -> adapter directory (stacks and compositions composed exactly, cached)."""
    from adapters import AdapterRegistry
    from adapters.cache import CompositeCache, resolve
    from adapters.stack import parse_stack
    from bench.cpu_lora import STACKS, compositions
    from serving.demo.defaults import home

    registry = AdapterRegistry(home() / "adapters", max_rank=64)
    cache = CompositeCache(work / "composites", registry, max_rank=64)
    singles = {
        a: registry.path(a, registry.get(a).version)
        for a in ("retail_media", "acme_retail", "brand_brewmax", "task_planning")
    }

    def pinned(text: str) -> str:
        return resolve(registry, parse_stack(text)).text

    stacks = {pinned(s): cache.get_or_build(resolve(registry, parse_stack(s))) for s in STACKS}
    many = {pinned(s): cache.get_or_build(resolve(registry, parse_stack(s))) for s in compositions(32)}
    return {"base": {}, "4 single adapters": singles, "4 stacks": stacks, "32 compositions": many}


ENGINE = {"max_loras": 8, "max_cpu_loras": 64}  # set from the command line; the same for both sides
RMN_ENV: dict[str, str] = {}  # --rmn-env: more environment for rmn's engine replica (experiments)


def _engine_args() -> dict[str, Any]:
    """Engine settings both sides get: ``max_loras`` >= the concurrency (every running request has a slot)
    and ``max_cpu_loras`` above the 32 compositions (none is reloaded from disk), by default."""
    return {
        "max_loras": ENGINE["max_loras"],
        "max_cpu_loras": ENGINE["max_cpu_loras"],
        "max_lora_rank": 64,
        "max_model_len": 2048,
        "dtype": "bfloat16",
    }


def _start_peer(
    model: Path, loads: dict[str, dict[str, Path]], port: int, log: Path, lora: bool = True
) -> subprocess.Popen[bytes]:
    """Stock vLLM; ``lora=False``: without ``--enable-lora`` (the model alone: the physical reference)."""
    e = _engine_args()
    names = {peer_name(name): path for load in loads.values() for name, path in load.items()}
    lora_args = [
        "--enable-lora",
        "--max-loras",
        str(e["max_loras"]),
        "--max-cpu-loras",
        str(e["max_cpu_loras"]),
        "--max-lora-rank",
        str(e["max_lora_rank"]),
        "--lora-modules",
        *[f"{n}={p}" for n, p in names.items()],
    ]
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        str(model),
        "--served-model-name",
        "base",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--max-model-len",
        str(e["max_model_len"]),
        "--dtype",
        e["dtype"],
        *(["--enforce-eager"] if DEVICE["name"] == "cpu" else []),  # CUDA graphs on a GPU, as vLLM's default
        *(lora_args if lora else []),
    ]
    env = {**os.environ, "VLLM_PLUGINS": "lora_filesystem_resolver"}
    if DEVICE["name"] == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # on a GPU vLLM sizes the KV cache (gpu_memory_utilization)
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


DEVICE = {"name": "cpu", "label": "CPU"}  # set by --device


def _device_label(device: str) -> str:
    """What the JSON says the servers ran on: CPU, or the GPU's name."""
    if device == "cpu":
        return "CPU"
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here (ENGINE=gpu make setup on a GPU machine)")
    return f"GPU {torch.cuda.get_device_name(0)}"


def peer_name(name: str) -> str:
    return name.replace(":", "_").replace("+", "_").replace("*", "w").replace("@", "v")


def _start_rmn(
    model: Path, port: int, work: Path, log: Path, executor: str = "uni", cpu_lora: str = "grouped"
) -> subprocess.Popen[bytes]:
    from serving.demo.defaults import home

    e = _engine_args()
    cpu = DEVICE["name"] == "cpu"
    engine = {k: e[k] for k in ("max_loras", "max_cpu_loras", "max_lora_rank", "max_model_len", "dtype")}
    cfg = {
        "model": {"path": str(model)},
        "adapters": {"root": str(home() / "adapters"), "cache_root": str(work / "rmn-composites")},
        # on cuda the engine's device defaults apply: CUDA graphs on, the KV cache sized by vLLM
        "engine": {**engine, "cpu_executor": executor, "cpu_lora": cpu_lora}
        if cpu
        else {**engine, "device": "cuda"},
        "http": {"port": port, "metrics_port": free_port(), "request_timeout_s": 600},
        "engine_deployment": {
            "max_ongoing_requests": 64,
            "max_queued_requests": 256,
            "num_cpus": 1,
            "num_gpus": 0 if cpu else 1,
            "env": {**({"VLLM_CPU_KVCACHE_SPACE": "1"} if cpu else {}), **RMN_ENV},
        },
    }
    path = work / f"rmn-peer-{executor}-{cpu_lora}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--config", str(path)]
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], path: str, timeout: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RuntimeError(f"not ready after {timeout}s")


async def _load(url: str, models: list[str], n: int, concurrency: int, tokens: int) -> dict[str, float]:
    sem = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, i: int) -> int:
        body = {
            "model": models[i % len(models)],
            "messages": [{"role": "user", "content": f"{QUESTION} (request {i})"}],
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        async with sem:
            r = await client.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    async with httpx.AsyncClient(timeout=1200) as client:
        await asyncio.gather(*[one(client, i) for i in range(min(concurrency, n))])  # warm: loads, kernels
        t = time.perf_counter()
        done = await asyncio.gather(*[one(client, i) for i in range(n)])
        wall = time.perf_counter() - t
    return {"tokens_per_s": round(sum(done) / wall, 2), "wall_s": round(wall, 2)}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


SIDES = {  # side -> (how it is started, the loads it serves)
    "vllm_no_lora": "stock vLLM without --enable-lora: the model alone, base load only (the reference)",
    "vllm": "stock vLLM with --enable-lora and vLLM's own CPU LoRA ops, adapters pre-built",
    "rmn": "rmn serve, open API, stacks composed on demand, grouped CPU LoRA (engine.cpu_lora=grouped)",
    "rmn_mp": "rmn as above with engine.cpu_executor=mp (vLLM's worker in a process of its own)",
    "rmn_compact": "rmn as above with engine.cpu_lora=compact (the compact arithmetic on every layer within the "
    "error bound, even where the fused one gives vLLM's bits)",
}
TARGETS = {"base": 0.95, "4 single adapters": 0.85, "4 stacks": 0.85, "32 compositions": 0.75}  # #24 item 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-loras", type=int, default=8, help="adapter slots per engine step (both sides)")
    ap.add_argument("--max-cpu-loras", type=int, default=64, help="adapters kept in CPU memory (both sides)")
    ap.add_argument(
        "--sides",
        nargs="+",
        choices=list(SIDES),
        default=["vllm_no_lora", "vllm", "rmn"],
        help="servers to run",
    )
    ap.add_argument("--loads", nargs="+", default=None, help="loads to run (default: all)")
    ap.add_argument("--out", default="bench/results/peer.json", help="results file")
    ap.add_argument(
        "--rmn-env", nargs="*", default=[], metavar="KEY=VALUE", help="env of rmn's engine replica"
    )
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: both servers on the GPU with vLLM's GPU defaults (CUDA graphs, KV cache sized by vLLM; "
        "needs the GPU install, ENGINE=gpu make setup)",
    )
    args = ap.parse_args()
    if args.device == "cuda" and {"rmn_mp", "rmn_compact"} & set(args.sides):
        ap.error("rmn_mp and rmn_compact compare CPU executors and CPU LoRA paths: not with --device cuda")
    DEVICE.update(name=args.device, label=_device_label(args.device))
    RMN_ENV.update(kv.split("=", 1) for kv in args.rmn_env)
    ENGINE.update(max_loras=args.max_loras, max_cpu_loras=args.max_cpu_loras)
    from serving.demo.defaults import demo_model_dir

    model = demo_model_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    loads = _prepare(work)
    if args.loads:
        unknown = set(args.loads) - set(loads)
        if unknown:
            ap.error(f"unknown loads {sorted(unknown)}; known: {sorted(loads)}")
        loads = {n: a for n, a in loads.items() if n in args.loads}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {side: [] for side in args.sides if side != "vllm_no_lora" or name == "base"} for name in loads
    }
    ready_s: dict[str, list[float]] = {side: [] for side in args.sides}
    for rep in range(args.reps):
        for side in args.sides if rep % 2 == 0 else args.sides[::-1]:  # the order alternated
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = work / f"{side}-{rep}.log"
            if side.startswith("rmn"):
                proc = _start_rmn(
                    model,
                    port,
                    work,
                    log,
                    "mp" if side == "rmn_mp" else "uni",
                    "compact" if side == "rmn_compact" else "grouped",
                )
            else:
                proc = _start_peer(model, loads, port, log, lora=side == "vllm")
            try:
                ready_s[side].append(
                    round(_wait_ready(url, proc, "/readyz" if side.startswith("rmn") else "/v1/models"), 1)
                )
                for name, adapters in loads.items():
                    if side not in runs[name]:
                        continue
                    if side == "vllm":
                        models = [peer_name(n) for n in adapters] or ["base"]
                    else:
                        models = [f"base:{n}" for n in adapters] or ["base"]
                    res = asyncio.run(_load(url, models, args.requests, args.concurrency, args.tokens))
                    runs[name][side].append(res)
                    print(f"rep {rep} {side} {name}: {res}", flush=True)
            finally:
                _stop(proc)
    med = {
        n: {s: statistics.median(r["tokens_per_s"] for r in v) for s, v in sides.items()}
        for n, sides in runs.items()
    }
    out: dict[str, Any] = {
        "model": f"SmolLM2-135M-Instruct (demo), bf16, {DEVICE['label']}",
        "load": f"{args.requests} chat requests, {args.concurrency} concurrent, {args.tokens} output tokens, ignore_eos, temperature 0",
        "engine": _engine_args(),
        "sides": {side: SIDES[side] for side in args.sides},
        "peer_version": f"{'vllm-cpu' if DEVICE['name'] == 'cpu' else 'vllm'} 0.29.0 from this venv, "
        "VLLM_PLUGINS=lora_filesystem_resolver (this project's plugin excluded)",
        "reps": args.reps,
        "ready_s": ready_s,
        "runs": runs,
        "median_tokens_per_s": med,
    }
    if "rmn" in args.sides and "vllm" in args.sides:
        out["rmn_over_vllm"] = {n: round(m["rmn"] / m["vllm"], 2) for n, m in med.items()}
    if "base" in med:
        out["lora_over_base"] = {
            side: {
                n: round(med[n][side] / med["base"][side], 3) for n in med if n != "base" and side in med[n]
            }
            for side in ("vllm", "rmn")
            if side in med["base"]
        }
    if "rmn" in args.sides and "rmn_mp" in args.sides:
        out["uni_over_mp"] = {n: round(m["rmn"] / m["rmn_mp"], 3) for n, m in med.items()}
    if "rmn" in args.sides and "rmn_compact" in args.sides:
        out["compact_over_grouped"] = {n: round(m["rmn_compact"] / m["rmn"], 3) for n, m in med.items()}
    if "rmn" in args.sides and "vllm_no_lora" in args.sides:
        ref = med["base"]["vllm_no_lora"]
        ratios = {n: round(m["rmn"] / ref, 3) for n, m in med.items()}
        out["rmn_over_vllm_no_lora"] = {
            n: {"ratio": r, "target": TARGETS[n], "met": r >= TARGETS[n]} for n, r in ratios.items()
        }
    print(write_results(args.out, out).read_text())


if __name__ == "__main__":
    main()
