"""Engine replicas on one node claim disjoint cores for vLLM's CPU threads (serving/engines/cpu_threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.engines.cpu_threads import claim_cores, release

CORES = sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(len(CORES) < 2, reason="needs two cores")
def test_two_replicas_get_disjoint_cores_and_a_released_core_is_free_again(tmp_path: Path) -> None:
    a, ha = claim_cores(1, tmp_path)
    b, hb = claim_cores(1, tmp_path)
    assert a != b and len(a) == len(b) == 1
    release(ha)
    c, hc = claim_cores(1, tmp_path)
    assert c == a
    release(hb + hc)


@pytest.mark.skipif(len(CORES) < 2, reason="needs two cores")
def test_a_dead_process_frees_its_cores_and_oversubscription_shares(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from serving.engines.cpu_threads import claim_cores; "
            f"import time; c, h = claim_cores({len(CORES)}, Path({str(tmp_path)!r})); print('ok', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
    shared, h = claim_cores(1, tmp_path)  # every core is claimed: share one rather than fail
    assert len(shared) == 1 and h == []
    holder.kill()
    holder.wait()
    holder.stdout.close()
    free, h2 = claim_cores(len(CORES), tmp_path)
    assert free == CORES and len(h2) == len(CORES)
    release(h2)


@pytest.mark.parametrize(
    ("threads", "executor", "bind", "omp"),
    [(1, "uni", "nobind", "1"), (1, "mp", "<cores>", None), (2, "uni", "<cores>", None)],
)
def test_an_engine_binds_its_threads_unless_one_thread_runs_in_the_engine_core(
    threads: int, executor: str, bind: str, omp: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One thread under the "uni" executor runs unbound (the OS places it; the core is still claimed);
    otherwise vLLM's threads are bound to the claimed cores; an explicit binding is kept."""
    from serving.engines.config import EngineConfig, ModelConfig
    from serving.engines.vllm_engine import VLLMEngine

    if threads > len(CORES):
        pytest.skip("needs two cores")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    engine = VLLMEngine(ModelConfig(path=tmp_path), EngineConfig(cpu_threads=threads, cpu_executor=executor))
    engine._bind_cores()
    claimed = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "rmn-cpu-claims").glob("core-*.lock"))
    assert len(claimed) == threads
    want = ",".join(map(str, claimed)) if bind == "<cores>" else bind
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == want and os.environ.get("OMP_NUM_THREADS") == omp
    release(engine._core_claims)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "3")
    VLLMEngine(ModelConfig(path=tmp_path), EngineConfig(cpu_executor=executor))._bind_cores()
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "3"
