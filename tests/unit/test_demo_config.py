"""The demo's embedded config and the deploy files that document it stay the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom import CleanRoomPolicy
from serving.config import load_config, load_yaml_model
from serving.demo.defaults import DEMO_KEYS, demo_config

ROOT = Path(__file__).resolve().parents[2]


def test_federated_deploy_file_matches_the_demo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RMN_HOME", raising=False)
    from_file = load_config(ROOT / "deploy" / "rmn-federated-cpu.yaml")
    embedded = demo_config()
    for section in ("federation", "cleanroom", "comparison"):
        assert getattr(from_file, section) == getattr(embedded, section), section


def test_acme_policy_file_matches_and_demo_keys_authenticate() -> None:
    policy = load_yaml_model(ROOT / "deploy" / "acme-cleanroom-policy.yaml", CleanRoomPolicy)
    assert policy == demo_config().market_policy()
    from federation.tenants import TenantDirectory

    tenants = TenantDirectory(demo_config().federation.tenants)  # type: ignore[union-attr]
    assert tenants.authenticate(f"Bearer {DEMO_KEYS['brewmax']}").id == "brewmax"
