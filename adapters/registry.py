"""A versioned adapter registry over a store: a directory, or an object store (``s3://...``).

Layout per version: ``<id>/<version>/`` with ``manifest.json`` (its presence publishes the version), the
PEFT files, and ``retired.json`` once retired (the files stay: composites in use may reference them). See
:mod:`adapters.store` for how each store publishes atomically and how object-store files reach a node.
Registration validates first, then publishes; a crash leaves at most leftovers that ``gc`` removes.

Reads on the request path are cached for ``metadata_ttl_s`` (default: 0 for a directory, 2 s for an
object store): a new version or a retirement is seen by every process within that time. Manifests of a
version never change, so they are cached for good (bounded). When the store is unreachable, reads
answer from the last metadata seen if any, else raise :class:`RegistryUnavailable`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from adapters.errors import (
    AdapterExists,
    AdapterNotFound,
    AdapterRetired,
    InvalidAdapter,
    RegistryUnavailable,
)
from adapters.hashing import sha256_file
from adapters.manifest import AdapterManifest, validate_adapter_id, validate_version, version_key
from adapters.store import CONFIG, MANIFEST, RETIRED, WEIGHTS, AdapterStore, open_store
from adapters.validate import base_revision, check_against_base

_FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_MANIFESTS_KEPT = 4096
log = logging.getLogger(__name__)


def _check_weights_finite(path: Path) -> None:
    from safetensors.torch import load

    try:
        tensors = load(path.read_bytes())  # from bytes: the mmap reader leaks (compose.load_lora)
        for key, t in tensors.items():
            if not bool(t.float().isfinite().all()):
                raise InvalidAdapter(f"tensor {key!r} in {path.name} contains NaN or Inf")
    except InvalidAdapter:
        raise
    except Exception as e:  # safetensors' own error types: a truncated or foreign file
        raise InvalidAdapter(f"{path.name} is not a readable safetensors file: {e}") from e


class AdapterRegistry:
    """Adapters by id and version in a store; thread- and process-safe for readers."""

    def __init__(
        self,
        root: Path | str,
        max_rank: int = 64,
        max_bytes: int = 512 << 20,
        *,
        store: AdapterStore | None = None,
        metadata_ttl_s: float | None = None,
    ) -> None:
        """``root``: a directory or an object-store URL (:func:`adapters.store.open_store`; pass
        ``store`` to choose its download cache and options)."""
        self.store = store or open_store(root)
        self.root: Path | str = getattr(self.store, "root", None) or self.store.url
        self.url = self.store.url
        self.max_rank = max_rank
        self.max_bytes = max_bytes
        self.ttl_s = (2.0 if self.store.remote else 0.0) if metadata_ttl_s is None else metadata_ttl_s
        self._scans: dict[str, tuple[float, dict[str, bool]]] = {}
        self._manifests: OrderedDict[tuple[str, str], AdapterManifest] = OrderedDict()
        self._lock = threading.Lock()

    # ---- reading -------------------------------------------------------------------------
    def _scan(self, adapter_id: str, max_age_s: float | None = None) -> dict[str, bool]:
        """version -> retired, at most ``max_age_s`` (default ``ttl_s``; 0: from the store now) old."""
        now = time.monotonic()
        with self._lock:
            hit = self._scans.get(adapter_id)
        if hit is not None and now - hit[0] < (self.ttl_s if max_age_s is None else max_age_s):
            return hit[1]
        try:
            scan = self.store.scan(adapter_id)
        except RegistryUnavailable:
            if hit is None:
                raise
            log.warning(
                "adapter store unreachable; using metadata of %s from %.0f s ago", adapter_id, now - hit[0]
            )
            return hit[1]
        if self.ttl_s > 0:
            with self._lock:
                if len(self._scans) > _MANIFESTS_KEPT:
                    self._scans.clear()
                self._scans[adapter_id] = (now, scan)
        return scan

    def invalidate(self, adapter_id: str) -> None:
        """Forget cached metadata of ``adapter_id`` (after this process changed it)."""
        with self._lock:
            self._scans.pop(adapter_id, None)

    def states(self, adapter_id: str) -> dict[str, bool]:
        """Registered versions of ``adapter_id``, oldest first -> whether each is retired (one listing)."""
        validate_adapter_id(adapter_id)
        scan = self._scan(adapter_id)
        return {v: scan[v] for v in sorted(scan, key=version_key)}

    def versions(self, adapter_id: str) -> list[str]:
        """Registered versions of ``adapter_id``, oldest first."""
        return list(self.states(adapter_id))

    def get(self, adapter_id: str, version: str | None = None) -> AdapterManifest:
        """The manifest of ``adapter_id`` at ``version`` (the latest one not retired when None); raises
        AdapterNotFound, or AdapterRetired for a retired version asked by number."""
        validate_adapter_id(adapter_id)
        scan = self._scan(adapter_id)
        if version is not None and version not in scan and self.ttl_s > 0:
            # published since the cached listing? (one listing per such request: tenants' rate limits bound it)
            scan = self._scan(adapter_id, max_age_s=0)
        if not scan:
            raise AdapterNotFound(f"adapter {adapter_id!r} is not registered")
        versions = sorted(scan, key=version_key)
        if version is None:
            version = next((v for v in reversed(versions) if not scan[v]), None)
            if version is None:
                raise AdapterRetired(f"every version of adapter {adapter_id!r} is retired")
        elif version not in scan:
            raise AdapterNotFound(f"adapter {adapter_id!r} has no version {version!r} (has {versions})")
        elif scan[version]:
            raise AdapterRetired(f"adapter {adapter_id!r} version {version!r} is retired")
        return self.manifest(adapter_id, version)

    def manifest(self, adapter_id: str, version: str) -> AdapterManifest:
        """The stored manifest of one version, retired or not (raises AdapterNotFound)."""
        validate_adapter_id(adapter_id)
        validate_version(version)
        with self._lock:
            m = self._manifests.get((adapter_id, version))
        if m is not None:
            return m
        try:
            text = self.store.read(adapter_id, version, MANIFEST)
        except FileNotFoundError as e:
            raise AdapterNotFound(f"adapter {adapter_id!r} has no version {version!r}") from e
        m = AdapterManifest.model_validate_json(text)
        with self._lock:
            self._manifests[(adapter_id, version)] = m
            while len(self._manifests) > _MANIFESTS_KEPT:
                self._manifests.popitem(last=False)
        return m

    def retired(self, adapter_id: str, version: str) -> dict[str, Any] | None:
        """The retirement record of a version (``{"at", "by"}``), or None while it is live."""
        try:
            return dict(json.loads(self.store.read(adapter_id, version, RETIRED)))
        except FileNotFoundError:
            return None

    def created(self, adapter_id: str, version: str) -> float:
        """When a version was published (seconds since the epoch)."""
        m = self.manifest(adapter_id, version)
        return m.created if m.created is not None else self.store.created(adapter_id, version)

    def next_version(self, adapter_id: str) -> str:
        """The version a new registration of ``adapter_id`` gets: one major above every version so far."""
        validate_adapter_id(adapter_id)
        versions = sorted(self._scan(adapter_id, max_age_s=0), key=version_key)
        return str(version_key(versions[-1])[0] + 1) if versions else "1"

    def path(self, adapter_id: str, version: str | None = None) -> Path:
        """Local directory holding the PEFT files of ``adapter_id`` (latest live version when None)."""
        return self.store.local_dir(self.get(adapter_id, version))

    def files(self, adapter_id: str, version: str) -> Path:
        """Local directory holding the PEFT files of one version, retired or not (engine replicas use it:
        which versions new requests may pin is decided where requests are resolved)."""
        return self.store.local_dir(self.manifest(adapter_id, version))

    def ids(self) -> list[str]:
        """Every adapter id with something stored, sorted."""
        return self.store.ids()

    def list(self) -> list[AdapterManifest]:
        """Latest live version of every registered adapter, by id."""
        out = []
        for adapter_id in self.ids():
            try:
                out.append(self.get(adapter_id))
            except (AdapterNotFound, InvalidAdapter):
                continue
        return out

    # ---- writing -------------------------------------------------------------------------
    def register(
        self, src: Path | str, base_model_dir: Path | None = None, **manifest_fields: Any
    ) -> AdapterManifest:
        """Validate the PEFT adapter in ``src`` and publish it with ``manifest_fields``.

        ``rank``, ``alpha``, ``target_modules`` and ``sha256`` are read from the files when not
        given, and must agree with them when given. With ``base_model_dir``, the adapter's shapes are
        checked against that model and ``base_model_revision`` must equal its weights' hash.
        Raises InvalidAdapter with the reason.
        """
        src = Path(src)
        weights, config = _adapter_files(src, self.max_bytes)
        rank = _files_agree(_read_config(config), weights, manifest_fields)
        if rank > self.max_rank:
            raise InvalidAdapter(f"rank {rank} is above the configured maximum {self.max_rank}")
        _check_weights_finite(weights)
        if base_model_dir is not None:
            check_against_base(src, Path(base_model_dir))
            revision = base_revision(Path(base_model_dir))
            given = manifest_fields.setdefault("base_model_revision", revision)
            if given != revision:
                raise InvalidAdapter(
                    f"base_model_revision {given!r} is not the base model's ({revision[:12]}...)"
                )
        manifest_fields["config_sha256"] = sha256_file(config)
        manifest_fields.setdefault("created", time.time())
        manifest = AdapterManifest(**manifest_fields)
        try:
            self.store.publish(manifest, weights, config)
        except FileExistsError as e:
            raise AdapterExists(f"adapter {manifest.id!r} version {manifest.version!r} already exists") from e
        finally:
            self.invalidate(manifest.id)
        return manifest

    def retire(self, adapter_id: str, version: str, by: str) -> dict[str, Any]:
        """Retire one version: no request resolves to it any more (latest skips it; pinned ones get
        AdapterRetired); its files stay. Idempotent: retiring again returns the first record."""
        self.manifest(adapter_id, version)  # exists
        if (record := self.retired(adapter_id, version)) is not None:
            return record
        record = {"at": time.time(), "by": by}
        self.store.put(adapter_id, version, RETIRED, json.dumps(record).encode())
        self.invalidate(adapter_id)
        return record

    def remove(self, adapter_id: str, version: str) -> None:
        """Delete one version of an adapter."""
        self.get(adapter_id, version)
        self.store.remove(adapter_id, version)
        self.invalidate(adapter_id)
        with self._lock:
            self._manifests.pop((adapter_id, version), None)

    def gc(self) -> int:
        """Remove leftovers of interrupted registrations; returns how many were removed."""
        return self.store.gc()


def _adapter_files(src: Path, max_bytes: int) -> tuple[Path, Path]:
    """The weights and config of a PEFT directory; InvalidAdapter for pickles, missing files, oversize."""
    if not src.is_dir():
        raise InvalidAdapter(f"{src} is not a directory")
    bad = [p.name for p in src.iterdir() if p.suffix in _FORBIDDEN_SUFFIXES]
    if bad:
        raise InvalidAdapter(f"pickle-based weights are refused ({', '.join(bad)}); use safetensors")
    weights, config = src / WEIGHTS, src / CONFIG
    for f in (weights, config):
        if not f.is_file():
            raise InvalidAdapter(f"{src} lacks {f.name}")
    if weights.stat().st_size > max_bytes:
        raise InvalidAdapter(f"{WEIGHTS} is {weights.stat().st_size} bytes, over the {max_bytes} limit")
    return weights, config


def _read_config(config: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise InvalidAdapter(f"{CONFIG} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise InvalidAdapter(f"{CONFIG} must be a JSON object")
    return cfg


def _files_agree(cfg: dict[str, Any], weights: Path, manifest_fields: dict[str, Any]) -> int:
    """Fill rank, alpha, target_modules and sha256 into ``manifest_fields`` from the files (InvalidAdapter when
    a given one disagrees); the rank."""
    try:
        rank, alpha = int(cfg.get("r", 0)), float(cfg.get("lora_alpha", 0))
    except (TypeError, ValueError) as e:
        raise InvalidAdapter(f"{CONFIG}: r and lora_alpha must be numbers ({e})") from e
    modules = cfg.get("target_modules") or []
    if isinstance(modules, str):
        raise InvalidAdapter("target_modules must be an explicit list of module names, not a regex")
    derived = {
        "rank": rank,
        "alpha": alpha,
        "target_modules": sorted(modules),
        "sha256": sha256_file(weights),
    }
    for key, value in derived.items():
        given = manifest_fields.get(key)
        if key == "target_modules" and given is not None:
            given = sorted(given)
        if (
            given is not None
            and given != value
            and not (isinstance(value, float) and math.isclose(float(given), value))
        ):
            raise InvalidAdapter(f"manifest {key}={given!r} disagrees with the files ({value!r})")
        manifest_fields[key] = value
    return rank
