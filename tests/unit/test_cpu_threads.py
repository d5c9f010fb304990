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
