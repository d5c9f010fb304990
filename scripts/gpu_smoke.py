"""The GPU smoke check (issue #30): what a person with one GPU runs first, in about ten minutes.

    make gpu-smoke              # or: .venv/bin/python scripts/gpu_smoke.py [--out bench/results/gpu-smoke.json]

Steps, each recorded as ok / failed / skipped with its reason and seconds:

1. ``environment``: GPU model, driver, the CUDA version torch was built for, vLLM's version, and which punica
   wrapper vLLM's platform selects (on CUDA it must be vLLM's own GPU wrapper: the grouped CPU path is CPU only);
2. ``gpu_tests``: ``pytest -m gpu`` (the engine on CUDA, eager and with CUDA graphs, an adapter and a stack);
3. ``serve``: the demo model and adapters (``make demo`` prepares them) served on the GPU through the app
   (federation off), ready time, GPU memory in use; the base model, 4 adapters, a weighted 2-stack and a 4-stack all
   answer 200 and the adapters and stacks change the text.

Without CUDA every step that needs it is skipped with that reason (a dry run: the script itself is tested on CPU,
tests/unit/test_gpu_smoke.py). Exit 0 when no step failed. Not yet here: throughput against stock vLLM on GPU,
adapter churn under a long stream (issue #30 items 1 and 6).
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
    from serving.demo.defaults import default_config, demo_model_dir, home
    from serving.local import local_app

    if not (demo_model_dir() / "config.json").is_file() or not (home() / "adapters").is_dir():
        raise RuntimeError("no demo model or adapters: run `make demo` once first (it prepares both)")
    base = default_config().model_dump(mode="json")
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
    distinct = len(set(answers.values()))
    if distinct < len(answers) - 1:  # one coincidence allowed on a 135M model; more means adapters do nothing
        raise RuntimeError(f"only {distinct} distinct answers from {len(answers)} models: {answers}")
    return {"ready_s": round(ready_s, 1), "gpu_memory_used_gib": round((total - free) / 2**30, 2),
            "answers": answers, "distinct_answers": distinct}  # fmt: skip


STEPS: list[tuple[str, Callable[[], dict[str, Any]], bool]] = [
    ("environment", environment, False),
    ("gpu_tests", gpu_tests, True),
    ("serve", serve, True),
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
