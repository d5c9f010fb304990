"""A tenant's key rotated through the mounted key file while the gateway serves: no restart, no gap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from federation.tenants import hash_key
from tests.gateway.conftest import GatewayFactory
from tests.tenants import KEYS, tenants_config


def write_keys(path: Path, keys: dict[str, list[str]]) -> None:
    tmp = path.with_suffix(".tmp")  # replaced whole, as a Secret volume update is
    tmp.write_text(yaml.safe_dump({t: [hash_key(k) for k in ks] for t, ks in keys.items()}))
    tmp.replace(path)


async def test_a_key_rotates_over_http_without_a_restart(gateway_app: GatewayFactory, tmp_path: Path) -> None:
    from federation.tenants import Tenant

    keys_file = tmp_path / "tenant-keys.yaml"
    keys = {t: [k] for t, k in KEYS.items()}
    write_keys(keys_file, keys)
    tenants = [Tenant.model_validate({**t, "api_key_sha256": None}) for t in tenants_config()]
    client, _, _ = gateway_app(federation={"tenants": tenants, "keys_file": keys_file, "keys_reload_s": 0.05})

    async def status(key: str) -> int:
        r = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        return r.status_code

    assert (await status(KEYS["brand_x"]), await status("k-brand-x-2")) == (200, 401)
    write_keys(keys_file, {**keys, "brand_x": [KEYS["brand_x"], "k-brand-x-2"]})
    await asyncio.sleep(0.1)
    assert (await status(KEYS["brand_x"]), await status("k-brand-x-2")) == (200, 200)
    write_keys(keys_file, {**keys, "brand_x": ["k-brand-x-2"]})
    await asyncio.sleep(0.1)
    assert (await status(KEYS["brand_x"]), await status("k-brand-x-2")) == (401, 200)
    assert await status(KEYS["agency"]) == 200  # the other tenants never noticed
