"""Two Ray nodes, no shared filesystem, an S3 registry: tests/multinode/two_nodes.py in its own process
(it owns a Ray cluster of two nodes; this session's cluster is another one). Its docstring lists the steps;
each is asserted there, and its observations are printed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_nodes_upload_serve_lose_a_node_lose_the_store() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.multinode.two_nodes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print(json.dumps(result, indent=1))
    assert result["engine_nodes"] == 2 and result["engine_nodes_after_loss"] == 1
    assert set(result["replicas_serving"].values()) == {2}
    assert result["after_loss_settled"].get("200", 0) > 0
