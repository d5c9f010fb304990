"""bench/peer.py on a GPU (``--device cuda``): both servers get vLLM's GPU defaults — no ``--enforce-eager``, no
CPU KV-cache setting, rmn's engine on cuda with a GPU reserved — and rmn's config is one the app accepts. The
processes are not started here (no GPU): the commands and the config they would run are checked."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import peer
from serving.config import AppConfig


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_popen(cmd: list[str], env: dict[str, str] | None = None, **kw: Any) -> None:
        kw["stdout"].close()  # the log file the child would have written
        calls.append((cmd, env or {}))

    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    return calls


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_both_servers_get_the_devices_settings(
    device: str,
    launched: list[tuple[list[str], dict[str, str]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(peer.DEVICE, "name", device)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    peer._start_peer(tmp_path / "model", {}, 8100, tmp_path / "peer.log", lora=False)
    peer._start_rmn(tmp_path / "model", 8101, tmp_path, tmp_path / "rmn.log")
    (cmd, env), _ = launched
    assert ("--enforce-eager" in cmd) == (device == "cpu")
    assert ("VLLM_CPU_KVCACHE_SPACE" in env) == (device == "cpu")
    raw = yaml.safe_load((tmp_path / "rmn-peer-uni-grouped.yaml").read_text())
    cfg = AppConfig.model_validate(raw)
    assert cfg.engine.device == device and cfg.engine_deployment.num_gpus == (device == "cuda")
    if device == "cpu":  # the side rmn_compact: the same server with engine.cpu_lora compact
        assert cfg.engine.cpu_lora == "grouped"
        peer._start_rmn(tmp_path / "model", 8102, tmp_path, tmp_path / "rmn.log", cpu_lora="compact")
        raw = yaml.safe_load((tmp_path / "rmn-peer-uni-compact.yaml").read_text())
        assert AppConfig.model_validate(raw).engine.cpu_lora == "compact"
    if device == "cuda":
        assert cfg.engine.enforce_eager is False and cfg.engine.kv_cache_memory_bytes is None
        assert "VLLM_CPU_KVCACHE_SPACE" not in cfg.engine_deployment.env
