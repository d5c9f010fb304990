"""The CPU LoRA numerics tests once per instruction set this CPU can be capped to.

oneDNN (bf16 matmuls) and MKL (fp32 gemv) pick their kernels, and so the order of a dot product's sums, by
ISA: a result proven on one CPU family proves nothing for another. ``ONEDNN_MAX_CPU_ISA`` and
``MKL_ENABLE_INSTRUCTIONS`` cap what they may use, which is how an AVX2-only or an AVX-512-without-BF16 CPU's
summation order shows up on the development machine (an ISA above what the CPU has cannot be reached; those
caps are skipped). tests/unit/test_cpu_lora_grouped.py asserts only what must hold on every CPU, so it must
pass under every cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.isa

ROOT = Path(__file__).resolve().parents[2]


def _flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


CAPS = [  # (environment, the CPU flags it needs): one per CPU family (the knobs a real CPU of it has together)
    ({"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, {"avx2", "fma"}),  # AVX2 only
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),  # no BF16
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, {"avx512_bf16"}),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, {"amx_bf16", "amx_tile"}),
]
# Not run: oneDNN and MKL capped one without the other (no real CPU is AVX2 for one library and AVX-512 for the
# other); they took ~75-100 s each of `make test` and, on the AMD machines, repeated the runs above (MKL takes its
# AVX2 paths there anyway).


def _pytest(path: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess[str]:
    """Run one test file in a fresh interpreter with ``env`` (oneDNN reads its cap once per process)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "caps", [c for c, _ in CAPS], ids=["+".join(f"{k}={v}" for k, v in c.items()) for c, _ in CAPS]
)
def test_numerics_hold_under_the_isa_cap(caps: dict[str, str]) -> None:
    needs = dict((tuple(sorted(c.items())), n) for c, n in CAPS)[tuple(sorted(caps.items()))]
    if not needs <= _flags():
        pytest.skip(f"this CPU lacks {sorted(needs - _flags())}: the cap cannot be reached here")
    done = _pytest("tests/unit/test_cpu_lora_grouped.py", {**os.environ, **caps}, 600)
    assert done.returncode == 0, f"{caps}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout and " failed" not in done.stdout  # exit 5 (nothing ran) fails too


def test_the_real_engine_serves_bounded_layers_under_a_cap(tmp_path: Path) -> None:
    """On a CPU whose oneDNN sums in another order no layer need be bit-identical to vLLM's ops, and the default
    mode serves those with an arithmetic whose error is within the bound (compact, else fused): the real-engine
    LoRA tests
    (tests/integration/test_lora_batch_regression.py: ``exact`` gives vLLM's greedy tokens, the default gives
    them or parts at a near-tie, the index -1 fix, the bypass) must pass there too. Stood in for by oneDNN's
    AVX512_CORE cap (AVX2 on a CPU without AVX-512); the engine's report says whether the bounded path ran
    (on the AMD development machines it does: every layer; a CPU whose layers stay bit-identical under the
    cap has nothing bounded to check, and skips)."""
    flags = _flags()
    cap = "AVX512_CORE" if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else "AVX2"
    if not {"avx2", "fma"} <= flags:
        pytest.skip("this CPU lacks AVX2: no cap to stand in for another CPU")
    report = tmp_path / "cpu-lora-report.json"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap, "RMN_TEST_CPU_LORA_REPORT": str(report)}
    done = _pytest("tests/integration/test_lora_batch_regression.py", env, 900)
    assert done.returncode == 0, f"{cap}:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout and " failed" not in done.stdout and " skipped" not in done.stdout
    other_bits = [layer for layer in json.loads(report.read_text())["layers"] if not layer["identical"]]
    if not other_bits:
        pytest.skip(
            f"under {cap} every layer of the test model stayed bit-identical here: nothing bounded ran"
        )
    served_bounded = {
        "compact": "compact_bounded",
        "grouped": "bounded",
    }  # the arithmetic -> its bound's verdict
    assert all(
        layer["arithmetic"] in served_bounded and layer[served_bounded[layer["arithmetic"]]]
        for layer in other_bits
    ), other_bits
