"""Embedded defaults: where ``make demo`` and ``rmn serve`` without ``--config`` keep things."""

from __future__ import annotations

import os
from pathlib import Path

from serving.config import AppConfig


def home() -> Path:
    """Artifacts root: ``$RMN_HOME`` or ``./artifacts`` (read at call time, never at import)."""
    return Path(os.environ.get("RMN_HOME", "artifacts")).resolve()


def demo_model_dir() -> Path:
    """Where ``rmn model prepare`` writes SmolLM2-135M-Instruct."""
    return home() / "models" / "smollm2-135m"


def default_config() -> AppConfig:
    """Local single-node config: demo model, local registry, CPU vLLM, 127.0.0.1:8000."""
    return AppConfig.model_validate(
        {
            "model": {"path": str(demo_model_dir()), "served_name": "base"},
            "adapters": {"root": str(home() / "adapters")},
            "engine": {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 64, "max_model_len": 2048},
        }
    )
