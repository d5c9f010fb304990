"""Embedded defaults: where ``make demo`` and ``rmn serve`` without ``--config`` keep things."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from serving.config import AppConfig


def home() -> Path:
    """Artifacts root: ``$RMN_HOME`` or ``./artifacts`` (read at call time, never at import)."""
    return Path(os.environ.get("RMN_HOME", "artifacts")).resolve()


def demo_model_dir() -> Path:
    """Where ``rmn model prepare`` writes SmolLM2-135M-Instruct."""
    return home() / "models" / "smollm2-135m"


# SmolLM2's own template adds this system message when a conversation has none; kept with the tools template
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def default_config() -> AppConfig:
    """Local single-node config: demo model, local registry, CPU vLLM, 127.0.0.1:8000."""
    return AppConfig.model_validate(
        {
            "model": {
                "path": str(demo_model_dir()),
                "served_name": "base",
                "chat_template": "chatml-tools",  # SmolLM2's own template has no tools section
                "chat_template_kwargs": {"default_system": SMOLLM2_SYSTEM},
                "tool_call_parser": "hermes",
            },
            "adapters": {"root": str(home() / "adapters")},
            "engine": {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 64, "max_model_len": 2048},
        }
    )


# the demo tenants' keys are public (README; `make demo` writes their hashes to $RMN_HOME/demo-tenant-keys.yaml):
# replace them for anything real
DEMO_KEYS = {
    "admin": "demo-admin-key",
    "brewmax": "demo-brewmax-key",
    "acme": "demo-acme-key",
    "agency": "demo-agency-key",
}
ACME_POLICY = {
    "retailer": "acme",
    "k": 100,
    "brand_owners": {"brewmax": ["brewmax"], "agency": ["brewmax"]},
    "dp": {
        "epsilon_per_query": 1.0,
        "max_epsilon_per_query": 2.0,
        "epsilon_budget": 10.0,
        "max_cells_per_shopper": 2,
        "metric_bounds": {
            "impressions": 20,
            "clicks": 5,
            "purchases": 3,
            "units": 5,
            "revenue": 40,
            "spend": 10,
        },
    },
}


def demo_keys_file() -> Path:
    """Write (if changed) and return the demo tenants' key file, ``$RMN_HOME/demo-tenant-keys.yaml``: what
    deploy/rmn-federated-cpu.yaml names as ``federation.keys_file`` (deploy/ holds no key, not even a demo's)."""
    import yaml

    from federation.tenants import hash_key

    path = home() / "demo-tenant-keys.yaml"
    text = yaml.safe_dump({t: hash_key(k) for t, k in DEMO_KEYS.items()}, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def demo_config() -> AppConfig:
    """The federated demo (what ``make demo`` serves; deploy/rmn-federated-cpu.yaml is the same as a file):
    demo tenants, the acme clean room with differential privacy, planning over the synthetic market."""
    from federation.tenants import hash_key

    base = default_config().model_dump(mode="json")
    tenants: list[dict[str, Any]] = [
        {"id": "admin", "role": "admin"},
        {"id": "brewmax", "role": "manufacturer", "retailer": "acme_retail", "manufacturer": "brand_brewmax"},
        {"id": "acme", "role": "retailer", "retailer": "acme_retail"},
        {"id": "agency", "role": "agency", "grants": ["brand_brewmax"], "rate_limit_per_minute": 60},
    ]
    for t in tenants:
        t["api_key_sha256"] = hash_key(DEMO_KEYS[str(t["id"])])
    return AppConfig.model_validate(
        {
            **base,
            "federation": {
                "tenants": tenants,
                "audit_log": str(home() / "audit" / "decisions.jsonl"),
                "policy": {
                    "industry_adapter": "retail_media",
                    "weights": {"industry": 0.3, "retailer": 0.3, "manufacturer": 0.5, "task": 0.5},
                },
            },
            "cleanroom": {"retailers": [{"db_path": str(home() / "acme.duckdb"), "policy": ACME_POLICY}]},
            "comparison": {},
        }
    )
