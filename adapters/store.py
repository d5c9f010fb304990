"""Where registered adapters' bytes live: a local directory, or an object store named by an fsspec URL.

Both stores hold, per adapter id and version, a ``manifest.json`` (its presence publishes the version),
the two PEFT files, and ``retired.json`` once retired. They differ in how a version is published and
read:

- :class:`DirStore` (``/srv/adapters``): ``<root>/<id>/<version>/`` published by one atomic rename;
  readers use the files in place.
- :class:`ObjectStore` (``s3://bucket/prefix``, any fsspec protocol): the files are uploaded under
  content-addressed names (``adapter_model.<sha256>.safetensors``, ``adapter_config.<sha256>.json``), then
  the manifest is written create-only (``If-None-Match: *``), so two racing uploads of one version cannot
  mix their files: the loser's objects are orphans that :meth:`ObjectStore.gc` removes. A replica reads a
  version through a node-local :class:`~adapters.nodecache.NodeCache` keyed by the weights' sha256 (and
  the config's), downloaded once per node and verified against the manifest. Every store call is retried
  with backoff; when the store stays unreachable the call raises :class:`RegistryUnavailable` (and, for a
  cool-down, later calls raise at once instead of waiting on the network again).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from adapters.errors import InvalidAdapter, RegistryUnavailable
from adapters.hashing import sha256_file
from adapters.manifest import AdapterManifest
from adapters.nodecache import NodeCache

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"
RETIRED = "retired.json"
T = TypeVar("T")


def is_url(root: str | Path) -> bool:
    """Whether a registry root names an object store (``scheme://...``) rather than a directory."""
    return "://" in str(root) and not str(root).startswith("file://")


class AdapterStore(Protocol):
    """What the registry needs from a store (ids and versions are validated by the caller)."""

    url: str
    remote: bool

    def ids(self) -> list[str]:
        """Adapter ids with anything stored, sorted."""

    def scan(self, adapter_id: str) -> dict[str, bool]:
        """Published versions of ``adapter_id`` -> whether each is retired."""

    def read(self, adapter_id: str, version: str, name: str) -> bytes:
        """One small file of a version (manifest or retirement record); FileNotFoundError if absent."""

    def created(self, adapter_id: str, version: str) -> float:
        """When a version was published (seconds since the epoch)."""

    def publish(self, manifest: AdapterManifest, weights: Path, config: Path) -> None:
        """Store a new version; FileExistsError when it exists already (nothing overwritten)."""

    def put(self, adapter_id: str, version: str, name: str, data: bytes) -> None:
        """Write one small file of a version (the retirement record)."""

    def remove(self, adapter_id: str, version: str) -> None:
        """Delete a version and its files."""

    def listing(self, adapter_id: str | None = None) -> list[str]:
        """Every stored name under ``adapter_id`` (or the whole store), relative, sorted; leftovers too."""

    def gc(self) -> int:
        """Remove leftovers of interrupted or lost publications; returns how many."""

    def local_dir(self, manifest: AdapterManifest) -> Path:
        """A local directory with the version's ``adapter_config.json`` and ``adapter_model.safetensors``."""


class DirStore:
    """Adapters in a local (or shared, mounted) directory."""

    remote = False

    def __init__(self, root: Path | str) -> None:
        self.root = Path(str(root).removeprefix("file://")).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def ids(self) -> list[str]:
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))

    def scan(self, adapter_id: str) -> dict[str, bool]:
        d = self.root / adapter_id
        if not d.is_dir():
            return {}
        return {
            p.name: (p / RETIRED).is_file()
            for p in d.iterdir()
            if not p.name.startswith(".") and (p / MANIFEST).is_file()
        }

    def read(self, adapter_id: str, version: str, name: str) -> bytes:
        return (self.root / adapter_id / version / name).read_bytes()

    def created(self, adapter_id: str, version: str) -> float:
        return (self.root / adapter_id / version / MANIFEST).stat().st_mtime

    def publish(self, manifest: AdapterManifest, weights: Path, config: Path) -> None:
        dest = self.root / manifest.id / manifest.version
        if dest.exists():
            raise FileExistsError(str(dest))
        (self.root / manifest.id).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root / manifest.id))
        try:
            shutil.copy2(weights, tmp / WEIGHTS)
            shutil.copy2(config, tmp / CONFIG)
            (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            os.rename(tmp, dest)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if dest.exists():
                raise FileExistsError(str(dest)) from e
            raise

    def put(self, adapter_id: str, version: str, name: str, data: bytes) -> None:
        d = self.root / adapter_id / version
        tmp = d / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, d / name)

    def remove(self, adapter_id: str, version: str) -> None:
        shutil.rmtree(self.root / adapter_id / version)

    def listing(self, adapter_id: str | None = None) -> list[str]:
        d = self.root / adapter_id if adapter_id else self.root
        if not d.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in d.rglob("*") if p.is_file())

    def gc(self) -> int:
        removed = 0
        for tmp in self.root.glob("*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
        return removed

    def local_dir(self, manifest: AdapterManifest) -> Path:
        return self.root / manifest.id / manifest.version


def _s3_defaults(timeout_s: float) -> dict[str, Any]:
    """s3fs options that make a dead endpoint fail in seconds (the store's own retries do the rest)."""
    return {
        "config_kwargs": {
            "connect_timeout": timeout_s,
            "read_timeout": timeout_s,
            "retries": {"max_attempts": 1, "mode": "standard"},
        },
    }


class ObjectStore:
    """Adapters in an object store (``s3://bucket/prefix``; any fsspec protocol), read through a
    node-local download cache."""

    remote = True

    def __init__(
        self,
        url: str,
        cache_root: Path | str,
        cache_max_bytes: int = 4 << 30,
        options: dict[str, Any] | None = None,
        retries: int = 3,
        timeout_s: float = 5.0,
        cooldown_s: float = 5.0,
    ) -> None:
        import fsspec

        self.url = url.rstrip("/")
        protocol = self.url.split("://", 1)[0]
        opts: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
        if protocol in ("s3", "s3a"):
            opts.update(_s3_defaults(timeout_s))
        for key, value in (options or {}).items():
            if isinstance(value, dict) and isinstance(opts.get(key), dict):
                opts[key] = {**opts[key], **value}
            else:
                opts[key] = value
        try:
            self._fs, self._root = fsspec.core.url_to_fs(self.url, **opts)
        except (ImportError, ValueError) as e:
            raise InvalidAdapter(f"adapter store {self.url!r} cannot be opened: {e}") from e
        self._root = self._root.rstrip("/")
        self._retries = max(1, retries)
        self._cooldown_s = cooldown_s
        self._down_until = 0.0
        self._down_reason = ""
        self._guard = threading.Lock()
        self.cache = NodeCache(cache_root, cache_max_bytes, marker=WEIGHTS)

    # ---- the network, retried ------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` retried with backoff on transport errors; FileNotFoundError/FileExistsError pass."""
        with self._guard:
            if time.monotonic() < self._down_until:
                raise RegistryUnavailable(self._down_reason)
        error: Exception | None = None
        for attempt in range(self._retries):
            try:
                return fn()
            except (FileNotFoundError, FileExistsError):
                raise
            except PermissionError as e:
                raise RegistryUnavailable(f"adapter store {self.url} refused {what}: {e}") from e
            except Exception as e:  # transport errors come as botocore/aiohttp/OSError types
                error = e
                if attempt + 1 < self._retries:
                    time.sleep(0.2 * 2**attempt)
        reason = (
            f"adapter store {self.url} is unreachable ({what} failed {self._retries} times: "
            f"{type(error).__name__}: {error})"
        )
        with self._guard:
            self._down_until = time.monotonic() + self._cooldown_s
            self._down_reason = reason
        raise RegistryUnavailable(reason) from error

    def _key(self, *parts: str) -> str:
        return "/".join((self._root, *parts))

    # ---- reading -------------------------------------------------------------------------
    def ids(self) -> list[str]:
        def ls() -> list[str]:
            try:
                entries = self._fs.ls(self._root, detail=True)
            except FileNotFoundError:
                return []
            return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]

        return sorted(n for n in self._call("list adapters", ls) if not n.startswith("."))

    def _find(self, key: str) -> list[str]:
        """Every object under ``key`` (none when the prefix does not exist), retried."""

        def find() -> list[str]:
            try:
                return list(self._fs.find(key))
            except FileNotFoundError:
                return []

        return self._call(f"list {key}", find)

    def scan(self, adapter_id: str) -> dict[str, bool]:
        published: set[str] = set()
        retired: set[str] = set()
        prefix = self._key(adapter_id) + "/"
        for key in self._find(self._key(adapter_id)):
            rel = key[len(prefix) :] if key.startswith(prefix) else ""
            version, _, name = rel.partition("/")
            if name == MANIFEST:
                published.add(version)
            elif name == RETIRED:
                retired.add(version)
        return {v: v in retired for v in published}

    def read(self, adapter_id: str, version: str, name: str) -> bytes:
        return bytes(
            self._call(
                f"read {adapter_id}/{version}/{name}",
                lambda: self._fs.cat_file(self._key(adapter_id, version, name)),
            )
        )

    def created(self, adapter_id: str, version: str) -> float:
        info = self._call(
            f"stat {adapter_id}/{version}", lambda: self._fs.info(self._key(adapter_id, version, MANIFEST))
        )
        for field in ("LastModified", "mtime", "created"):
            value = info.get(field)
            if hasattr(value, "timestamp"):
                return float(value.timestamp())
            if isinstance(value, int | float):
                return float(value)
        return 0.0

    # ---- writing -------------------------------------------------------------------------
    def publish(self, manifest: AdapterManifest, weights: Path, config: Path) -> None:
        mid, v = manifest.id, manifest.version
        if self._call(f"stat {mid}/{v}", lambda: self._fs.exists(self._key(mid, v, MANIFEST))):
            raise FileExistsError(f"{mid}/{v}")
        for src, name in ((weights, _weights_name(manifest)), (config, _config_name(manifest))):
            key = self._key(mid, v, name)
            self._call(f"upload {mid}/{v}/{name}", functools.partial(self._fs.put_file, str(src), key))
        data = manifest.model_dump_json(indent=2).encode()
        key = self._key(mid, v, MANIFEST)
        try:
            self._call(f"publish {mid}/{v}", lambda: self._fs.pipe_file(key, data, mode="create"))
        except RegistryUnavailable as e:  # some fsspec backends report a failed precondition as an error
            if self._fs.exists(key):
                raise FileExistsError(f"{mid}/{v}") from e
            raise

    def put(self, adapter_id: str, version: str, name: str, data: bytes) -> None:
        key = self._key(adapter_id, version, name)
        self._call(f"write {adapter_id}/{version}/{name}", lambda: self._fs.pipe_file(key, data))

    def remove(self, adapter_id: str, version: str) -> None:
        key = self._key(adapter_id, version)
        self._call(f"remove {adapter_id}/{version}", lambda: self._fs.rm(key, recursive=True))

    def listing(self, adapter_id: str | None = None) -> list[str]:
        keys = self._find(self._key(adapter_id) if adapter_id else self._root)
        return sorted(k[len(self._root) + 1 :] for k in keys)

    def gc(self, min_age_s: float = 3600.0) -> int:
        """Delete objects that no manifest names (a lost or interrupted upload) once ``min_age_s`` old
        (younger ones may belong to an upload in progress)."""
        removed = 0
        now = time.time()
        for adapter_id in self.ids():
            keys = self._call(
                f"list {adapter_id}", functools.partial(self._fs.find, self._key(adapter_id), detail=True)
            )
            by_version: dict[str, dict[str, dict[str, Any]]] = {}
            prefix = self._key(adapter_id) + "/"
            for key, info in keys.items():
                version, _, name = key[len(prefix) :].partition("/")
                by_version.setdefault(version, {})[name] = info
            for version, files in by_version.items():
                keep = {MANIFEST, RETIRED}
                if MANIFEST in files:
                    m = AdapterManifest.model_validate_json(self.read(adapter_id, version, MANIFEST))
                    keep |= {_weights_name(m), _config_name(m)}
                for name, info in files.items():
                    modified = info.get("LastModified")
                    age = now - modified.timestamp() if modified is not None else min_age_s
                    if name not in keep and age >= min_age_s:
                        key = self._key(adapter_id, version, name)
                        self._call(f"remove {key}", functools.partial(self._fs.rm_file, key))
                        removed += 1
        return removed

    # ---- the node-local copy ---------------------------------------------------------------
    def local_dir(self, manifest: AdapterManifest) -> Path:
        if manifest.config_sha256 is None:
            raise InvalidAdapter(f"manifest of {manifest.id}@{manifest.version} lacks config_sha256")
        key = f"{manifest.sha256}-{manifest.config_sha256[:16]}"
        path, _ = self.cache.get_or_make(key, lambda tmp: self._download(manifest, tmp))
        return path

    def _download(self, manifest: AdapterManifest, out: Path) -> None:
        mid, v = manifest.id, manifest.version
        for name, local, digest in (
            (_config_name(manifest), CONFIG, manifest.config_sha256),
            (_weights_name(manifest), WEIGHTS, manifest.sha256),
        ):
            key = self._key(mid, v, name)
            self._call(
                f"download {mid}/{v}/{name}", functools.partial(self._fs.get_file, key, str(out / local))
            )
            got = sha256_file(out / local)
            if got != digest:
                raise InvalidAdapter(
                    f"{mid}@{v}: {name} in the store hashes to {got[:12]}..., not the manifest's "
                    f"{str(digest)[:12]}... (altered in the store?)"
                )


def _weights_name(m: AdapterManifest) -> str:
    return f"adapter_model.{m.sha256}.safetensors"


def _config_name(m: AdapterManifest) -> str:
    return f"adapter_config.{m.config_sha256}.json"


def open_store(
    root: str | Path,
    cache_root: Path | str | None = None,
    cache_max_bytes: int = 4 << 30,
    options: dict[str, Any] | None = None,
    retries: int = 3,
    timeout_s: float = 5.0,
) -> AdapterStore:
    """The store a registry root names: a directory path (or ``file://``), or an fsspec URL whose
    downloads go to ``cache_root`` (default ``<temp dir>/rmn-adapters``)."""
    if not is_url(root):
        return DirStore(root)
    cache = Path(cache_root) if cache_root else Path(tempfile.gettempdir()) / "rmn-adapters"
    return ObjectStore(str(root), cache, cache_max_bytes, options, retries, timeout_s)
