"""The GPU smoke check (issue #30): what a person with one GPU runs first, in about ten minutes.

    make gpu-smoke              # or: .venv/bin/python scripts/gpu_smoke.py [--out bench/results/gpu-smoke.json]

Steps, each recorded as ok / failed / skipped with its reason and seconds:

1. ``environment``: GPU model, driver, the CUDA version torch was built for, vLLM's version, and which punica
   wrapper vLLM's platform selects (on CUDA it must be vLLM's own GPU wrapper: the grouped CPU path is CPU only);
2. ``gpu_tests``: ``pytest -m gpu`` (the engine on CUDA, eager and with CUDA graphs, an adapter and a stack);
3. ``serve``: the demo model and adapters (prepared here when missing, as ``make demo`` does) served on the GPU through the app
   (federation off), ready time, GPU memory in use; the base model, 4 adapters, a weighted 2-stack and a 4-stack all
   answer 200 and the adapters and stacks change the text;
4. ``churn``: in the same app, a long streamed answer (512 tokens) while more compositions than
   ``engine.max_cpu_loras`` are asked for beside it (each composed, loaded, evicted): the stream's p99 time between
   chunks must stay within 3x its median (loads must not stall running streams);
5. ``throughput``: ``bench.peer --device cuda`` (one rep, shortened): rmn against stock vLLM's server on the GPU,
   base, 4 adapters, 4 stacks and 32 compositions; rmn / vLLM must be >= 0.9 on base and 4 adapters;
6. ``exactness``: a fresh app under vLLM's batch-invariant mode: every model's greedy tokens alone equal its
   tokens inside a batch of all of them (GPU kernels are not batch-invariant otherwise: no such claim without it).
``serve`` also checks that the app's and vLLM's Prometheus series are exported; each app stops cleanly on exit.

On a machine where ``nvidia-smi`` lists a GPU but this venv's torch has no CUDA (the CPU engine's venv) the
``environment`` step fails and says how to set up the GPU engine: no silent all-skipped pass on a GPU machine.
Without CUDA (and no GPU) every step that needs it is skipped with that reason (a dry run: the script itself is tested on CPU,
tests/unit/test_gpu_smoke.py, and so are the verdicts of steps 4 and 5 on made-up numbers). Exit 0 when no step
failed. Nothing here has run on a GPU yet.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ["retail_media", "acme_retail", "brand_brewmax", "task_creative"]
STACKS = ["brand_brewmax*0.7+task_creative*0.5", "retail_media+acme_retail+brand_brewmax+task_planning"]


def cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def gpus_visible() -> str:
    """The GPUs ``nvidia-smi -L`` lists ('' when it is missing or lists none): what the machine has, whatever
    this venv's torch was built for."""
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 and "GPU" in done.stdout else ""


def environment() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda": cuda()}
    try:
        import vllm

        out["vllm"] = vllm.__version__
        from vllm.platforms import current_platform

        out["platform"] = type(current_platform).__name__
        out["punica_wrapper"] = current_platform.get_punica_wrapper()
    except Exception as e:  # a broken vLLM install is what this step is for
        out["vllm_error"] = f"{type(e).__name__}: {e}"
    visible = gpus_visible()
    if visible and not out["cuda"]:  # a GPU machine with the CPU engine's venv: every step would be skipped
        raise RuntimeError(
            f"a GPU is visible ({visible.splitlines()[0]}) but this venv's torch {torch.__version__} has no CUDA: "
            "it was set up for the CPU engine. Run `make gpu-smoke` (it picks ENGINE=gpu where nvidia-smi "
            "lists a GPU) in a checkout without a CPU .venv (`rm -rf .venv` first)"
        )
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name(0)
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        out["driver"] = smi.stdout.strip() or smi.stderr.strip()
        if "punica_wrapper" in out and "cpu" in out["punica_wrapper"].lower():
            raise RuntimeError(
                f"vLLM selects {out['punica_wrapper']} on CUDA: the GPU path must use vLLM's own"
            )
    return out


def gpu_tests() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = done.stdout.strip().splitlines()[-1:] or [done.stderr.strip()[-300:]]
    if done.returncode != 0:
        raise RuntimeError(f"pytest -m gpu exited {done.returncode}: {tail[0]}")
    return {"summary": tail[0]}


def serve() -> dict[str, Any]:
    import openai
    import torch

    from serving.config import AppConfig
    from serving.demo.defaults import default_config, demo_model_dir
    from serving.demo.run import ensure_demo_adapters
    from serving.local import local_app
    from serving.modelprep.smollm2 import prepare_smollm2

    defaults = default_config()
    ensure_demo_adapters(  # the demo model and adapters, prepared here when missing (as `make demo` does)
        prepare_smollm2(demo_model_dir()), defaults.adapters.registry(defaults.engine.max_lora_rank)
    )
    base = defaults.model_dump(mode="json")
    engine = {k: v for k, v in base["engine"].items() if k not in ("kv_cache_memory_bytes", "enforce_eager")}
    base["engine"] = {
        **engine,
        "device": "cuda",
        "gpu_memory_utilization": 0.5,
    }  # CUDA's defaults for the rest
    base["engine_deployment"] = {"num_gpus": 1, "num_cpus": 2}
    config = AppConfig.model_validate(base)
    started = time.perf_counter()
    answers: dict[str, str] = {}
    with local_app(config) as url:
        ready_s = time.perf_counter() - started
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for model in ["base", *(f"base:{a}" for a in ADAPTERS), *(f"base:{s}" for s in STACKS)]:
            r = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "An ad line for coffee"}],
                max_tokens=24,
                temperature=0,
            )
            answers[model] = r.choices[0].message.content or ""
        free, total = torch.cuda.mem_get_info()
        churn = churn_under_stream(url, config.engine.max_cpu_loras + 4)
        metrics = scraped(config.http.metrics_port, ("ray_rmn_requests_total", "ray_vllm_"))
    distinct = len(set(answers.values()))
    if distinct < len(answers) - 1:  # one coincidence allowed on a 135M model; more means adapters do nothing
        raise RuntimeError(f"only {distinct} distinct answers from {len(answers)} models: {answers}")
    CHURN.update(churn)
    return {"ready_s": round(ready_s, 1), "gpu_memory_used_gib": round((total - free) / 2**30, 2),
            "answers": answers, "distinct_answers": distinct, "metrics": metrics}  # fmt: skip


def scraped(port: int, prefixes: tuple[str, ...], wait_s: float = 30.0) -> dict[str, int]:
    """Series per name prefix on the node's Prometheus endpoint (Ray exports every few seconds);
    RuntimeError when a prefix has none within ``wait_s``."""
    import httpx

    counts: dict[str, int] = {}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        counts = {p: sum(line.startswith(p) for line in text.splitlines()) for p in prefixes}
        if all(counts.values()):
            return counts
        time.sleep(2)
    raise RuntimeError(f"metrics missing on :{port}/metrics: {counts}")


def exactness() -> dict[str, Any]:
    """Under vLLM's batch-invariant mode (``VLLM_BATCH_INVARIANT=1``), each model's greedy answer alone equals its
    answer inside a batch of all of them at once (base, adapters, stacks): what the CPU tests prove op by op."""
    import concurrent.futures

    import httpx

    from serving.config import AppConfig
    from serving.demo.defaults import default_config
    from serving.local import local_app

    base = default_config().model_dump(mode="json")
    engine = {k: v for k, v in base["engine"].items() if k not in ("kv_cache_memory_bytes", "enforce_eager")}
    base["engine"] = {**engine, "device": "cuda", "gpu_memory_utilization": 0.5}
    base["engine_deployment"] = {"num_gpus": 1, "num_cpus": 2, "env": {"VLLM_BATCH_INVARIANT": "1"}}
    models = ["base", *(f"base:{a}" for a in ADAPTERS), *(f"base:{s}" for s in STACKS)]

    def ask(url: str, model: str) -> list[str]:
        body = {"model": model, "prompt": "An ad line for coffee:", "max_tokens": 32, "temperature": 0,
                "logprobs": 1}  # fmt: skip
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
        r.raise_for_status()
        return list(r.json()["choices"][0]["logprobs"]["tokens"])

    with local_app(AppConfig.model_validate(base)) as url:
        alone = {m: ask(url, m) for m in models}
        with concurrent.futures.ThreadPoolExecutor(len(models) * 2) as pool:
            mixed = list(pool.map(lambda m: (m, ask(url, m)), models * 2))
    differ = sorted({m for m, tokens in mixed if tokens != alone[m]})
    if differ:
        raise RuntimeError(f"batched answers differ from the same model alone: {differ}")
    return {"models": len(models), "batched_requests": len(mixed), "identical": True}


CHURN: dict[str, Any] = {}  # measured inside ``serve``'s app (one engine start), judged by the ``churn`` step


def churn_under_stream(url: str, compositions: int) -> dict[str, Any]:
    """Seconds between the chunks of a 512-token stream while ``compositions`` distinct weighted stacks are
    asked for beside it (more than the engine keeps: each is composed, loaded and later evicted)."""
    import threading

    import httpx

    gaps: list[float] = []
    answered: list[int] = []

    def stream() -> None:
        body = {"model": "base", "prompt": "The history of coffee", "max_tokens": 512, "temperature": 0,
                "ignore_eos": True, "stream": True}  # fmt: skip
        last = None
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now

    streamer = threading.Thread(target=stream)
    streamer.start()
    time.sleep(1.0)  # the stream is running
    with httpx.Client(timeout=300) as c:
        for i in range(compositions):
            w = round(0.05 + 0.9 * i / max(1, compositions - 1), 3)
            model = f"base:brand_brewmax*{w}+task_creative*{round(1 - w, 3)}"
            body = {"model": model, "prompt": "An ad line", "max_tokens": 8, "temperature": 0}
            answered.append(c.post(f"{url}/v1/completions", json=body).status_code)
    streamer.join()
    return {"gaps_s": gaps, "loads_asked": compositions, "statuses": answered}


def churn_verdict(measured: dict[str, Any], bound: float = 3.0) -> dict[str, Any]:
    """The ``churn`` step from :func:`churn_under_stream`'s numbers: RuntimeError unless every composition was
    answered 200 and the stream's p99 gap is within ``bound`` x its median."""
    import statistics

    gaps = sorted(measured.get("gaps_s") or [])
    if len(gaps) < 50:
        raise RuntimeError(f"the stream gave {len(gaps)} gaps, too few to judge (serve step failed?)")
    median, p99 = statistics.median(gaps), gaps[int(0.99 * (len(gaps) - 1))]
    bad = [s for s in measured["statuses"] if s != 200]
    out = {"chunks": len(gaps) + 1, "median_gap_s": round(median, 5), "p99_gap_s": round(p99, 5),
           "p99_over_median": round(p99 / median, 2), "compositions": measured["loads_asked"]}  # fmt: skip
    if bad:
        raise RuntimeError(
            f"{len(bad)} of {len(measured['statuses'])} compositions not answered 200: {bad[:5]}"
        )
    if p99 > bound * median:
        raise RuntimeError(
            f"loads stall the stream: p99 gap {p99:.4f}s > {bound}x median {median:.4f}s ({out})"
        )
    return out


def churn() -> dict[str, Any]:
    return churn_verdict(CHURN)


THROUGHPUT_TARGETS = {"base": 0.9, "4 single adapters": 0.9}


def throughput_verdict(peer: dict[str, Any]) -> dict[str, Any]:
    """The ``throughput`` step from ``bench.peer``'s JSON: rmn / stock vLLM (with LoRA) per load; RuntimeError
    when a target of :data:`THROUGHPUT_TARGETS` is missed."""
    med = peer["median_tokens_per_s"]
    ratios = {n: round(m["rmn"] / m["vllm"], 3) for n, m in med.items() if "rmn" in m and "vllm" in m}
    missed = {n: r for n, r in ratios.items() if n in THROUGHPUT_TARGETS and r < THROUGHPUT_TARGETS[n]}
    out = {"model": peer.get("model"), "rmn_over_vllm": ratios, "targets": THROUGHPUT_TARGETS,
           "tokens_per_s": med}  # fmt: skip
    if missed or set(THROUGHPUT_TARGETS) - set(ratios):
        raise RuntimeError(
            f"rmn / vLLM below target or not measured: {missed or sorted(THROUGHPUT_TARGETS)} ({out})"
        )
    return out


def throughput() -> dict[str, Any]:
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "peer-gpu.json"
        cmd = [sys.executable, "-m", "bench.peer", "--device", "cuda", "--reps", "1", "--requests", "128",
               "--concurrency", "16", "--sides", "vllm", "rmn", "--out", str(out)]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
        if done.returncode != 0:
            raise RuntimeError(f"bench.peer exited {done.returncode}: {(done.stdout + done.stderr)[-800:]}")
        return throughput_verdict(json.loads(out.read_text()))


STEPS: list[tuple[str, Callable[[], dict[str, Any]], bool]] = [
    ("environment", environment, False),
    ("gpu_tests", gpu_tests, True),
    ("serve", serve, True),
    ("churn", churn, True),
    ("throughput", throughput, True),
    ("exactness", exactness, True),
]


def run(out: Path) -> int:
    results: dict[str, Any] = {"steps": {}}
    has_cuda = cuda()
    for name, step, needs_cuda in STEPS:
        started = time.perf_counter()
        if needs_cuda and not has_cuda:
            record: dict[str, Any] = {
                "status": "skipped",
                "reason": "no CUDA device (torch.cuda.is_available() is False)",
            }
        else:
            try:
                record = {"status": "ok", **step()}
            except Exception as e:
                record = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
        record["seconds"] = round(time.perf_counter() - started, 1)
        results["steps"][name] = record
        print(
            f"[{record['status']:7s}] {name} ({record['seconds']} s){': ' + record['reason'] if 'reason' in record else ''}"
        )
    sys.path.insert(0, str(ROOT))
    from bench.record import write_results

    path = write_results(out, results)
    print(f"wrote {path}")
    return 1 if any(r["status"] == "failed" for r in results["steps"].values()) else 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description="The GPU smoke check (skips what needs CUDA when there is none)."
    )
    ap.add_argument("--out", default="bench/results/gpu-smoke.json", help="where the JSON goes")
    return run(Path(ap.parse_args().out))


if __name__ == "__main__":
    raise SystemExit(main())
