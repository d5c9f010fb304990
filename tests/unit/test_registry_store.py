"""The registry over both stores: a directory and a real S3-compatible server (moto on loopback).

The object-store cases are written as a cluster would meet them: two registries with their own node-local
caches standing for two nodes, racing uploads of one version, an object altered in the bucket, a store
that goes away."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from adapters import AdapterNotFound, AdapterRegistry, AdapterRetired, InvalidAdapter
from adapters.errors import RegistryUnavailable
from adapters.hashing import sha256_file
from adapters.store import ObjectStore, open_store
from tests.unit.test_registry import META, peft_dir

_buckets = itertools.count()


def s3_registry(s3: Any, cache: Path, url: str | None = None, **kw: Any) -> AdapterRegistry:
    """A registry on a fresh bucket (or ``url``) of the session's S3 server, caching into ``cache``."""
    url = url or s3.make_bucket(f"reg-{next(_buckets)}") + "/adapters"
    ttl = kw.pop("metadata_ttl_s", None)
    store = open_store(url, cache_root=cache, options=s3.options(), **kw)
    return AdapterRegistry(url, store=store, metadata_ttl_s=ttl)


@pytest.fixture(params=["dir", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AdapterRegistry:
    if request.param == "dir":
        return AdapterRegistry(tmp_path / "reg")
    return s3_registry(request.getfixturevalue("s3"), tmp_path / "node-cache")


def test_register_serve_new_version_retire(registry: AdapterRegistry, tmp_path: Path) -> None:
    v1 = registry.register(peft_dir(tmp_path / "a", value=0.1), id="acme", **META)
    assert v1.config_sha256 == sha256_file(tmp_path / "a" / "adapter_config.json")
    files = registry.path("acme")
    assert sha256_file(files / "adapter_model.safetensors") == v1.sha256
    assert sha256_file(files / "adapter_config.json") == v1.config_sha256
    assert registry.next_version("acme") == "2"
    v2 = registry.register(peft_dir(tmp_path / "b", value=0.2), id="acme", version="2", **META)
    assert registry.get("acme") == v2 and registry.versions("acme") == ["1", "2"]
    with pytest.raises(InvalidAdapter, match="already exists"):
        registry.register(peft_dir(tmp_path / "c", value=0.3), id="acme", version="2", **META)
    assert registry.get("acme", "2").sha256 == v2.sha256  # nothing overwritten
    registry.retire("acme", "2", by="admin")
    assert registry.get("acme") == v1  # latest live
    with pytest.raises(AdapterRetired):
        registry.get("acme", "2")
    assert sha256_file(registry.files("acme", "2") / "adapter_model.safetensors") == v2.sha256
    assert registry.retired("acme", "2")["by"] == "admin"
    assert [m.id for m in registry.list()] == ["acme"] and registry.ids() == ["acme"]
    assert registry.created("acme", "1") > time.time() - 600
    with pytest.raises(AdapterNotFound):
        registry.get("nobody")


def test_two_nodes_see_a_new_version_within_the_ttl_and_cache_their_own_copy(s3: Any, tmp_path: Path) -> None:
    a = s3_registry(s3, tmp_path / "node-a", metadata_ttl_s=0.5)
    b = s3_registry(s3, tmp_path / "node-b", url=a.url, metadata_ttl_s=0.5)
    a.register(peft_dir(tmp_path / "v1", value=0.1), id="acme", **META)
    assert b.get("acme").version == "1"
    m2 = a.register(peft_dir(tmp_path / "v2", value=0.2), id="acme", version="2", **META)
    assert b.get("acme", "2") == m2  # a pinned version unknown to the cached listing: listed again
    a.retire("acme", "2", by="admin")
    deadline = time.monotonic() + 5
    while b.get("acme").version != "1":  # the retirement reaches the other node within the TTL
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pa, pb = a.files("acme", "2"), b.files("acme", "2")
    assert pa.parent == tmp_path / "node-a" and pb.parent == tmp_path / "node-b"
    assert pa.name == pb.name == f"{m2.sha256}-{m2.config_sha256[:16]}"  # type: ignore[index]


def test_an_object_altered_in_the_bucket_is_refused_and_not_cached(s3: Any, tmp_path: Path) -> None:
    reg = s3_registry(s3, tmp_path / "cache")
    m = reg.register(peft_dir(tmp_path / "a"), id="acme", **META)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    key = f"{reg.url}/acme/1/adapter_model.{m.sha256}.safetensors"
    fs.pipe_file(key, (tmp_path / "a" / "adapter_model.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(InvalidAdapter, match="not the manifest's"):
        reg.path("acme")
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == []


def test_racing_uploads_of_one_version_publish_exactly_one(s3: Any, tmp_path: Path) -> None:
    regs = [s3_registry(s3, tmp_path / f"n{i}") for i in range(1)]
    regs += [s3_registry(s3, tmp_path / f"n{i}", url=regs[0].url) for i in range(1, 4)]
    results: list[Any] = [None] * 4

    def upload(i: int) -> None:
        try:
            results[i] = regs[i].register(
                peft_dir(tmp_path / f"src{i}", value=0.1 * (i + 1)), id="acme", **META
            )
        except InvalidAdapter as e:
            results[i] = e

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if not isinstance(r, Exception)]
    assert len(won) == 1, results
    assert all("already exists" in str(r) for r in results if isinstance(r, Exception))
    fresh = s3_registry(s3, tmp_path / "reader", url=regs[0].url)
    files = fresh.path("acme")  # verified against the winner's manifest
    assert sha256_file(files / "adapter_model.safetensors") == won[0].sha256
    assert isinstance(fresh.store, ObjectStore)
    # what the losers uploaded before losing (none for one that saw the manifest first) is orphaned; gc removes
    # exactly that and keeps the winner's three objects
    keep = {
        "acme/1/manifest.json",
        f"acme/1/adapter_model.{won[0].sha256}.safetensors",
        f"acme/1/adapter_config.{won[0].config_sha256}.json",
    }
    orphans = set(fresh.store.listing("acme")) - keep
    assert fresh.store.gc(min_age_s=0) == len(orphans)
    assert set(fresh.store.listing("acme")) == keep
    assert fresh.path("acme") == files and fresh.store.gc(min_age_s=0) == 0


def test_an_unreachable_store_answers_503_material_quickly_and_stale_metadata_serves(tmp_path: Path) -> None:
    from tests.s3 import start_s3

    server = start_s3()
    try:
        reg = s3_registry(server, tmp_path / "cache", metadata_ttl_s=0.1, retries=2, timeout_s=1.0)
        reg.register(peft_dir(tmp_path / "a"), id="acme", **META)
        assert reg.get("acme").version == "1"
        reg.path("acme")  # downloaded while the store is up
    finally:
        server.stop()
    time.sleep(0.2)  # past the TTL
    started = time.monotonic()
    assert reg.get("acme").version == "1"  # the last listing seen, with a warning
    assert reg.path("acme").is_dir()  # the node-local copy
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        reg.get("other")
    first = time.monotonic() - started
    assert first < 10, first  # retries with backoff, then an answer: not a hang
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        reg.get("another")  # within the cool-down: at once
    assert time.monotonic() - started < 0.5
    with pytest.raises(RegistryUnavailable):
        reg.register(peft_dir(tmp_path / "b"), id="acme", version="2", **META)


def test_the_download_cache_is_bounded_lru(s3: Any, tmp_path: Path) -> None:
    reg = s3_registry(s3, tmp_path / "cache", cache_max_bytes=1)  # each download evicts the older ones
    for i, v in enumerate(("1", "2", "3")):
        reg.register(peft_dir(tmp_path / v, value=0.1 * (i + 1)), id="acme", version=v, **META)
        reg.path("acme", v)
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert [e.name.split("-")[0] for e in entries] == [reg.get("acme", "3").sha256]


def test_a_bad_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapter, match="cannot be opened"):
        open_store("nosuchproto://bucket/x", cache_root=tmp_path)
