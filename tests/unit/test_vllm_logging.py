"""vLLM's import must not close the host's log handlers (serving/engines/vllm_logging.py): in a fresh interpreter, a
Serve-like ``MemoryHandler`` (capacity 1) on ``ray.serve`` keeps flushing after vLLM is imported, and vLLM's own
lines still print in vLLM's format; without the guard the same setup keeps every record (the leak, shown)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import io, logging, logging.handlers, sys
sink = io.StringIO()
target = logging.StreamHandler(sink)
serve = logging.getLogger("ray.serve")
serve.propagate = False
serve.setLevel(logging.INFO)
memory = logging.handlers.MemoryHandler(capacity=1, target=target, flushLevel=logging.ERROR)
serve.addHandler(memory)
guard = sys.argv[1] == "guard"
if guard:
    from serving.engines.vllm_logging import install_vllm_handler, keep_host_handlers
    assert keep_host_handlers()
import vllm.logger
if guard:
    assert install_vllm_handler() and not install_vllm_handler()  # once
for i in range(200):
    serve.info("CALL generate OK %d", i)
from serving.engines.vllm_logging import records_held
print("held", len(memory.buffer), records_held(), "target", memory.target is not None, "lines", sink.getvalue().count("CALL"))
logging.getLogger("vllm.engine").info("hello from vllm")
"""


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("VLLM_CONFIGURE_LOGGING", "VLLM_LOGGING_CONFIG_PATH")
    }
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_vllm_import_leaves_serves_log_handler_working_with_the_guard() -> None:
    out = _run("guard")
    assert out.returncode == 0, out.stderr
    assert "held 0 0 target True lines 200" in out.stdout, out.stdout
    vllm_line = [ln for ln in out.stdout.splitlines() if "hello from vllm" in ln]
    assert vllm_line and vllm_line[0].startswith("INFO ") and "]" in vllm_line[0], out.stdout  # vLLM's format


def test_without_the_guard_the_closed_handler_keeps_every_record() -> None:
    """The failure the guard prevents, reproduced: vLLM's dictConfig closes the handler, which then holds all 200."""
    out = _run("plain")
    assert out.returncode == 0, out.stderr
    assert "held 200 200 target False lines 0" in out.stdout, out.stdout
