"""Tenants' key hashes from a file (a mounted Secret), rotated while the router runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from federation.config import FederationConfig
from federation.keys import KeyFile, KeyFileError, read_key_file
from federation.tenants import AuthError, TenantDirectory, hash_key

TENANTS = [{"id": "brewmax", "role": "manufacturer"}, {"id": "acme", "role": "retailer"}]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def secret_volume(root: Path, text: str, version: int) -> Path:
    """Write ``text`` the way the kubelet updates a Secret volume: a new timestamped directory, then an
    atomic swap of the ``..data`` symlink; the file the config names is a symlink through ``..data``."""
    stamp = root / f"..2026_12_06_{version}"
    stamp.mkdir()
    (stamp / "tenant-keys.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(stamp.name)
    os.replace(tmp, root / "..data")
    link = root / "tenant-keys.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/tenant-keys.yaml")
    return link


def bearer(key: str) -> str:
    return f"Bearer {key}"


def test_a_key_is_rotated_without_a_restart(tmp_path: Path) -> None:
    path = secret_volume(tmp_path, f"brewmax: {hash_key('old')}\nacme: {hash_key('acme-1')}\n", 1)
    clock = Clock()
    fed = FederationConfig.model_validate({"tenants": TENANTS, "keys_file": path, "keys_reload_s": 10})
    directory = TenantDirectory(fed.tenants, KeyFile(path, ["brewmax", "acme"], fed.keys_reload_s, clock))
    assert directory.authenticate(bearer("old")).id == "brewmax"
    with pytest.raises(AuthError):
        directory.authenticate(bearer("new"))
    # step 1: both keys valid while clients move over
    secret_volume(
        tmp_path, f"brewmax: [{hash_key('old')}, {hash_key('new')}]\nacme: {hash_key('acme-1')}\n", 2
    )
    with pytest.raises(AuthError):  # not yet looked at: at most every keys_reload_s
        directory.authenticate(bearer("new"))
    clock.t = 10.0
    assert directory.authenticate(bearer("new")).id == "brewmax"
    assert directory.authenticate(bearer("old")).id == "brewmax"
    # step 2: the old key is removed
    secret_volume(tmp_path, f"brewmax: {hash_key('new')}\nacme: {hash_key('acme-1')}\n", 3)
    clock.t = 20.0
    assert directory.authenticate(bearer("new")).id == "brewmax"
    with pytest.raises(AuthError, match="invalid API key"):
        directory.authenticate(bearer("old"))


def test_a_bad_file_stops_the_start_and_a_bad_update_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    fed = FederationConfig.model_validate({"tenants": TENANTS, "keys_file": path})
    with pytest.raises(KeyFileError, match=f"key file {path} cannot be read"):
        fed.directory()
    path.write_text(f"brewmax: {hash_key('k')}\n")
    clock = Clock()
    keys = KeyFile(path, ["brewmax", "acme"], interval_s=1, clock=clock)
    directory = TenantDirectory(fed.tenants, keys)
    path.write_text("brewmax: [")  # a half-written update
    clock.t = 5
    assert directory.authenticate(bearer("k")).id == "brewmax"
    assert "the last good keys stay in force" in caplog.text
    assert "acme" not in {t.id for t in directory._by_hash.values()}  # a tenant without keys cannot log in


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mallory: " + "a" * 64, "'mallory' is not a tenant"),
        ("brewmax: demo-brewmax-key", "is not a sha256 hex digest"),
        ("brewmax: []", "expected a sha256 hash or a non-empty list"),
        (f"brewmax: {hash_key('x')}\nacme: {hash_key('x')}", "share one API key"),
        ("- brewmax", "expected a mapping"),
    ],
)
def test_key_file_errors_name_the_file_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=message) as e:
        read_key_file(path, ["brewmax", "acme"])
    assert str(path) in str(e.value)
    assert "demo-brewmax-key" not in str(e.value)  # a key pasted by mistake is not echoed whole


def test_one_key_source() -> None:
    with pytest.raises(ValueError, match="carry api_key_sha256 while keys_file is set"):
        FederationConfig.model_validate(
            {"tenants": [{**TENANTS[0], "api_key_sha256": hash_key("k")}], "keys_file": "/etc/rmn/keys"}
        )
    with pytest.raises(ValueError, match=r"have no api_key_sha256 \(or set federation.keys_file\)"):
        FederationConfig.model_validate({"tenants": TENANTS})
