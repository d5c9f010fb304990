"""The GPU smoke script's dry run on a machine without CUDA: it runs, records the environment, skips every step
that needs a GPU with the reason, writes its JSON and exits 0 (so the first GPU session only has to run it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_without_cuda(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run `make gpu-smoke` for real")
    out = tmp_path / "gpu-smoke.json"
    done = subprocess.run(
        [sys.executable, "scripts/gpu_smoke.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    body = json.loads(out.read_text())
    steps = body["steps"]
    assert steps["environment"]["status"] == "ok" and steps["environment"]["cuda"] is False
    assert steps["environment"]["punica_wrapper"].endswith("PunicaWrapperCPU")
    for name in ("gpu_tests", "serve", "churn", "throughput", "exactness"):
        assert steps[name]["status"] == "skipped" and "no CUDA device" in steps[name]["reason"]
    assert body["run"]["commit"] and "[skipped] serve" in done.stdout


def _smoke():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_churn_verdict_wants_every_load_answered_and_no_stalled_stream() -> None:
    smoke = _smoke()
    steady = {"gaps_s": [0.010] * 495 + [0.02] * 5, "loads_asked": 20, "statuses": [200] * 20}
    verdict = smoke.churn_verdict(steady)
    assert verdict["p99_over_median"] == 1.0 and verdict["chunks"] == 501
    stalled = {**steady, "gaps_s": [0.010] * 480 + [0.5] * 20}  # loads pause the stream: 4 % of gaps at 50x
    with pytest.raises(RuntimeError, match="loads stall the stream"):
        smoke.churn_verdict(stalled)
    with pytest.raises(RuntimeError, match="not answered 200"):
        smoke.churn_verdict({**steady, "statuses": [200] * 19 + [503]})
    with pytest.raises(RuntimeError, match="too few"):
        smoke.churn_verdict({})


def test_the_throughput_verdict_holds_rmn_to_90_percent_of_vllm_on_base_and_adapters() -> None:
    smoke = _smoke()
    med = {"base": {"vllm": 1000.0, "rmn": 950.0}, "4 single adapters": {"vllm": 800.0, "rmn": 760.0},
           "32 compositions": {"vllm": 500.0, "rmn": 300.0}}  # fmt: skip
    out = smoke.throughput_verdict({"model": "x, GPU H100", "median_tokens_per_s": med})
    assert out["rmn_over_vllm"] == {"base": 0.95, "4 single adapters": 0.95, "32 compositions": 0.6}
    slow = {**med, "4 single adapters": {"vllm": 800.0, "rmn": 600.0}}
    with pytest.raises(RuntimeError, match="4 single adapters"):
        smoke.throughput_verdict({"median_tokens_per_s": slow})


def test_a_gpu_machine_with_the_cpu_engines_venv_fails_instead_of_skipping_everything() -> None:
    """nvidia-smi lists a GPU, torch has no CUDA: the environment step fails and names the fix, so the first GPU
    session cannot report an all-skipped run as a pass."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    smoke = _smoke()
    smoke.gpus_visible = lambda: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"
    with pytest.raises(RuntimeError, match=r"GPU is visible \(GPU 0: NVIDIA H100.*has no CUDA.*ENGINE=gpu"):
        smoke.environment()
    smoke.gpus_visible = lambda: ""  # no GPU at all: the dry run's environment step holds
    assert smoke.environment()["cuda"] is False


def test_setup_refuses_to_mix_engines_in_one_venv(tmp_path: Path) -> None:
    """A venv that holds one engine is not given the other (same `vllm` module; torch X+cpu meets torch==X)."""
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".engine").write_text("cpu\n")
    (tmp_path / "constraints").mkdir()
    (tmp_path / "constraints" / "gpu.txt").write_text("")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup-venv.sh")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "EXTRAS": "gpu,test"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "holds the cpu engine, this target needs gpu" in done.stderr
