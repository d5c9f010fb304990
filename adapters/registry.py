"""A versioned adapter registry over a directory store.

Layout: ``<root>/<id>/<version>/{manifest.json, adapter_config.json, adapter_model.safetensors}`` and, once
a version is retired, ``retired.json`` beside them (its files stay: composites in use may reference them).
Registration validates first and then publishes with one atomic rename, so a reader never sees a
half-registered adapter and a crash leaves at most a ``.tmp-*`` directory that ``gc`` removes.
In a multi-node cluster ``root`` must be shared storage (see README, "Multi-node").
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adapters.errors import AdapterNotFound, AdapterRetired, InvalidAdapter
from adapters.hashing import sha256_file
from adapters.manifest import AdapterManifest, validate_adapter_id, validate_version, version_key
from adapters.validate import base_revision, check_against_base

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
MANIFEST = "manifest.json"
RETIRED = "retired.json"
_FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _check_weights_finite(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = f.get_tensor(key)
                if not bool(t.float().isfinite().all()):
                    raise InvalidAdapter(f"tensor {key!r} in {path.name} contains NaN or Inf")
    except InvalidAdapter:
        raise
    except Exception as e:  # safetensors' own error types: a truncated or foreign file
        raise InvalidAdapter(f"{path.name} is not a readable safetensors file: {e}") from e


class AdapterRegistry:
    """Adapters by id and version in a directory; thread- and process-safe for readers."""

    def __init__(self, root: Path | str, max_rank: int = 64, max_bytes: int = 512 << 20) -> None:
        self.root = Path(root)
        self.max_rank = max_rank
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- reading -------------------------------------------------------------------------
    def versions(self, adapter_id: str) -> list[str]:
        """Registered versions of ``adapter_id``, oldest first."""
        validate_adapter_id(adapter_id)
        d = self.root / adapter_id
        if not d.is_dir():
            return []
        found = [p.name for p in d.iterdir() if (p / MANIFEST).is_file() and not p.name.startswith(".")]
        return sorted(found, key=version_key)

    def get(self, adapter_id: str, version: str | None = None) -> AdapterManifest:
        """The manifest of ``adapter_id`` at ``version`` (the latest one not retired when None); raises
        AdapterNotFound, or AdapterRetired for a retired version asked by number."""
        versions = self.versions(adapter_id)
        if not versions:
            raise AdapterNotFound(f"adapter {adapter_id!r} is not registered")
        if (
            version is None
        ):  # newest first: on the request path this is one existence check, not one per version
            version = next((v for v in reversed(versions) if not self._is_retired(adapter_id, v)), None)
            if version is None:
                raise AdapterRetired(f"every version of adapter {adapter_id!r} is retired")
        elif version not in versions:
            raise AdapterNotFound(f"adapter {adapter_id!r} has no version {version!r} (has {versions})")
        elif self._is_retired(adapter_id, version):
            raise AdapterRetired(f"adapter {adapter_id!r} version {version!r} is retired")
        return self.manifest(adapter_id, version)

    def manifest(self, adapter_id: str, version: str) -> AdapterManifest:
        """The stored manifest of one version, retired or not (raises AdapterNotFound)."""
        validate_adapter_id(adapter_id)
        validate_version(version)
        try:
            text = (self.root / adapter_id / version / MANIFEST).read_text()
        except FileNotFoundError as e:
            raise AdapterNotFound(f"adapter {adapter_id!r} has no version {version!r}") from e
        return AdapterManifest.model_validate_json(text)

    def _is_retired(self, adapter_id: str, version: str) -> bool:
        return (self.root / adapter_id / version / RETIRED).is_file()

    def retired(self, adapter_id: str, version: str) -> dict[str, Any] | None:
        """The retirement record of a version (``{"at", "by"}``), or None while it is live."""
        try:
            return dict(json.loads((self.root / adapter_id / version / RETIRED).read_text()))
        except FileNotFoundError:
            return None

    def created(self, adapter_id: str, version: str) -> float:
        """When a version was published (its manifest's mtime, seconds since the epoch)."""
        return (self.root / adapter_id / version / MANIFEST).stat().st_mtime

    def next_version(self, adapter_id: str) -> str:
        """The version a new registration of ``adapter_id`` gets: one major above every version so far."""
        versions = self.versions(adapter_id)
        return str(version_key(versions[-1])[0] + 1) if versions else "1"

    def path(self, adapter_id: str, version: str | None = None) -> Path:
        """Local directory holding the PEFT files of ``adapter_id`` (latest version when None)."""
        m = self.get(adapter_id, version)
        return self.root / m.id / m.version

    def ids(self) -> list[str]:
        """Every adapter id with at least one registered version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))

    def list(self) -> list[AdapterManifest]:
        """Latest version of every registered adapter, by id."""
        out = []
        for d in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if d.is_dir() and not d.name.startswith("."):
                try:
                    out.append(self.get(d.name))
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
        if not src.is_dir():
            raise InvalidAdapter(f"{src} is not a directory")
        bad = [p.name for p in src.iterdir() if p.suffix in _FORBIDDEN_SUFFIXES]
        if bad:
            raise InvalidAdapter(f"pickle-based weights are refused ({', '.join(bad)}); use safetensors")
        weights, config = src / WEIGHTS, src / CONFIG
        for f in (weights, config):
            if not f.is_file():
                raise InvalidAdapter(f"{src} lacks {f.name}")
        if weights.stat().st_size > self.max_bytes:
            raise InvalidAdapter(
                f"{WEIGHTS} is {weights.stat().st_size} bytes, over the {self.max_bytes} limit"
            )
        try:
            cfg = json.loads(config.read_text())
        except json.JSONDecodeError as e:
            raise InvalidAdapter(f"{CONFIG} is not valid JSON: {e}") from e
        if not isinstance(cfg, dict):
            raise InvalidAdapter(f"{CONFIG} must be a JSON object")
        try:
            rank, alpha = int(cfg.get("r", 0)), float(cfg.get("lora_alpha", 0))
        except (TypeError, ValueError) as e:
            raise InvalidAdapter(f"{CONFIG}: r and lora_alpha must be numbers ({e})") from e
        modules = cfg.get("target_modules") or []
        if isinstance(modules, str):
            raise InvalidAdapter("target_modules must be an explicit list of module names, not a regex")
        digest = sha256_file(weights)
        derived = {"rank": rank, "alpha": alpha, "target_modules": sorted(modules), "sha256": digest}
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
        manifest = AdapterManifest(**manifest_fields)
        dest = self.root / manifest.id / manifest.version
        if dest.exists():
            raise InvalidAdapter(f"adapter {manifest.id!r} version {manifest.version!r} already exists")
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
                raise InvalidAdapter(
                    f"adapter {manifest.id!r} version {manifest.version!r} already exists"
                ) from e
            raise
        return manifest

    def retire(self, adapter_id: str, version: str, by: str) -> dict[str, Any]:
        """Retire one version: no request resolves to it any more (latest skips it; pinned ones get
        AdapterRetired); its files stay. Idempotent: retiring again returns the first record."""
        import time

        self.manifest(adapter_id, version)  # exists
        if (record := self.retired(adapter_id, version)) is not None:
            return record
        record = {"at": time.time(), "by": by}
        d = self.root / adapter_id / version
        tmp = d / f".{RETIRED}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, d / RETIRED)
        return record

    def remove(self, adapter_id: str, version: str) -> None:
        """Delete one version of an adapter."""
        validate_version(version)
        self.get(adapter_id, version)
        shutil.rmtree(self.root / adapter_id / version)

    def gc(self) -> int:
        """Remove leftovers of interrupted registrations; returns how many were removed."""
        removed = 0
        for tmp in self.root.glob("*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
        return removed
