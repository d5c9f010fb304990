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
    for name in ("gpu_tests", "serve"):
        assert steps[name]["status"] == "skipped" and "no CUDA device" in steps[name]["reason"]
    assert body["run"]["commit"] and "[skipped] serve" in done.stdout
