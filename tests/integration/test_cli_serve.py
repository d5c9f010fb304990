"""`rmn serve` as a user runs it: starts its own Ray cluster, answers, and Ctrl-C stops only that."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

pytestmark = pytest.mark.slow


def test_rmn_serve_answers_and_stops_on_ctrl_c(
    tiny_model: Path, registry_root: Path, tmp_path: Path, serve_url: str
) -> None:
    port = free_port()
    cfg = tmp_path / "rmn.yaml"
    cfg.write_text(
        f"model: {{path: {tiny_model}}}\nadapters: {{root: {registry_root}}}\n"
        "engine: {max_lora_rank: 16, max_model_len: 512}\n"
        "engine_deployment: {num_cpus: 0.5, env: {VLLM_ENABLE_V1_MULTIPROCESSING: '1'}}\n"
        f"http: {{port: {port}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--config", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(1)
        assert ready, "rmn serve did not become ready"
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=60,
            json={"model": "base:alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert r.status_code == 200 and r.headers["x-rmn-model"] == "base:alpha@1"
        # graceful shutdown: a request in flight when Ctrl-C arrives still completes
        in_flight: dict[str, object] = {}

        def long_request() -> None:
            try:
                resp = httpx.post(
                    f"http://127.0.0.1:{port}/v1/completions",
                    timeout=120,
                    json={"model": "base", "prompt": "coffee", "max_tokens": 300, "ignore_eos": True},
                )
                in_flight["status"], in_flight["tokens"] = (
                    resp.status_code,
                    resp.json()["usage"]["completion_tokens"],
                )
            except Exception as e:
                in_flight["error"] = repr(e)

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        worker.join(timeout=120)
        assert in_flight.get("status") == 200 and in_flight.get("tokens") == 300, in_flight
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert f"http://127.0.0.1:{port}/v1" in out
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)
    # the test session's own cluster was not touched
    assert httpx.get(f"{serve_url}/healthz", timeout=10).status_code == 200
