"""The demo's embedded config and the deploy files that document it stay the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom import CleanRoomPolicy
from serving.config import load_config, load_yaml_model
from serving.demo.defaults import DEMO_KEYS, demo_config, demo_keys_file

ROOT = Path(__file__).resolve().parents[2]


def test_federated_deploy_file_matches_the_demo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RMN_HOME", raising=False)
    from_file = load_config(ROOT / "deploy" / "rmn-federated-cpu.yaml")
    embedded = demo_config()
    for section in ("cleanroom", "comparison"):
        assert getattr(from_file, section) == getattr(embedded, section), section
    # the same tenants; the file's keys come from the key file `make demo` writes (deploy/ holds no key)
    fed, emb = from_file.federation, embedded.federation
    assert fed is not None and emb is not None and emb.keys_file is None
    keyless = [t.model_copy(update={"api_key_sha256": None}) for t in emb.tenants]
    assert fed.tenants == keyless
    assert fed.model_dump(exclude={"tenants", "keys_file"}) == emb.model_dump(
        exclude={"tenants", "keys_file"}
    )
    assert fed.keys_file == demo_keys_file()
    by_file, by_config = fed.directory(), emb.directory()
    for tenant, key in DEMO_KEYS.items():
        assert (
            by_file.authenticate(f"Bearer {key}").id == by_config.authenticate(f"Bearer {key}").id == tenant
        )


def test_acme_policy_file_matches_and_demo_keys_authenticate() -> None:
    policy = load_yaml_model(ROOT / "deploy" / "acme-cleanroom-policy.yaml", CleanRoomPolicy)
    assert policy == demo_config().market_policy()
    from federation.tenants import TenantDirectory

    tenants = TenantDirectory(demo_config().federation.tenants)  # type: ignore[union-attr]
    assert tenants.authenticate(f"Bearer {DEMO_KEYS['brewmax']}").id == "brewmax"
