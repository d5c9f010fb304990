"""Adapters over HTTP: who may register, read and retire what, and the upload's checks.

The router calls these; the registration itself runs on an engine replica (:meth:`EngineDeployment.
register_adapter`), which has the base model to check shapes against, as ``rmn adapters register`` does.

Rules: an admin registers any kind and visibility; a manufacturer tenant registers only private manufacturer
adapters it owns (a new id, or a new version of its own); other roles register nothing. Reading: an adapter's
metadata is shown to whoever may use it (private ones to their owner, grantees and admins; to anyone else they do
not exist: 404). Retiring: admins, and a manufacturer its own adapters. Every registration gets a new version
(one major above the last); nothing is ever overwritten.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from starlette.requests import Request

from adapters import AdapterManifest, AdapterRegistry, InvalidAdapter
from adapters.errors import AdapterNotFound
from adapters.registry import CONFIG, WEIGHTS
from federation.errors import InvalidRequest, PermissionDenied
from federation.tenants import Role, Tenant
from serving.errors import LengthRequired, PayloadTooLarge

FILES = (CONFIG, WEIGHTS)
FIELDS = ("id", "kind", "visibility", "description", "owner")


async def read_upload(
    request: Request, limit: int, file_parts: tuple[str, ...], max_fields: int
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The multipart body's files (exactly ``file_parts``, each once) and text fields; InvalidRequest for a
    malformed body or unexpected/missing parts, 411 without Content-Length, 413 above ``limit`` bytes (checked
    before anything is read)."""
    from starlette.datastructures import UploadFile

    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise LengthRequired("an upload needs a Content-Length header")
    if int(length) > limit:
        raise PayloadTooLarge(f"the upload is {int(length)} bytes, over the {limit}-byte limit")
    try:
        form = await request.form(max_files=len(file_parts), max_fields=max_fields)
    except Exception as e:  # starlette's MultiPartException and malformed bodies
        raise InvalidRequest(f"the body is not a valid multipart upload: {e}") from e
    files: dict[str, bytes] = {}
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in file_parts or key in files:
                raise InvalidRequest(
                    f"unexpected file part {key!r}; send {' and '.join(file_parts)} once each"
                )
            files[key] = await value.read()
        else:
            fields[key] = str(value)
    if set(files) != set(file_parts):
        raise InvalidRequest(f"missing file parts: {', '.join(sorted(set(file_parts) - set(files)))}")
    return files, fields


def upload_fields(tenant: Tenant, form: dict[str, str], registry: AdapterRegistry) -> dict[str, Any]:
    """The manifest fields of an upload by ``tenant`` (with the new version), or InvalidRequest / PermissionDenied."""
    unknown = set(form) - set(FIELDS)
    if unknown:
        raise InvalidRequest(
            f"unknown form fields {sorted(unknown)}; allowed: {', '.join(FIELDS)} and the two files"
        )
    for name in ("id", "kind"):
        if not form.get(name):
            raise InvalidRequest(f"form field {name!r} is required")
    adapter_id, kind = form["id"], form["kind"]
    admin = tenant.role == Role.admin
    visibility = form.get("visibility") or ("public" if admin else "private")
    owner = form.get("owner") or tenant.id
    if not admin:
        if tenant.role != Role.manufacturer:
            raise PermissionDenied(f"tenant {tenant.id!r} ({tenant.role.value}) may not register adapters")
        if kind != "manufacturer" or visibility != "private" or owner != tenant.id:
            raise PermissionDenied(
                f"tenant {tenant.id!r} may register only private manufacturer adapters it owns "
                "(kind=manufacturer, visibility=private, no other owner)"
            )
    if len(form.get("description", "")) > 500:
        raise InvalidRequest("description is longer than 500 characters")
    try:
        versions = registry.versions(adapter_id)
    except InvalidAdapter as e:
        raise InvalidRequest(str(e)) from e
    if versions:
        last = registry.manifest(adapter_id, versions[-1])
        if not admin and last.owner != tenant.id:
            raise PermissionDenied(f"adapter {adapter_id!r} belongs to another tenant")
        if last.kind.value != kind:
            raise InvalidRequest(
                f"adapter {adapter_id!r} is a {last.kind.value} adapter; a new version keeps its kind"
            )
    return {
        "id": adapter_id,
        "version": registry.next_version(adapter_id),
        "kind": kind,
        "visibility": visibility,
        "owner": owner,
        "description": form.get("description", ""),
    }


def register_files(
    registry: AdapterRegistry,
    model_dir: Path,
    files: dict[str, bytes],
    fields: dict[str, Any],
    targets: set[str] | None = None,
) -> AdapterManifest:
    """Write the uploaded files to a scratch directory and register them checked against the base model
    (every check of ``rmn adapters register``) and, given ``targets``, against the modules the engine applies
    LoRA to (:func:`check_targets`); the scratch directory is removed. Raises InvalidAdapter."""
    if targets is not None:
        try:
            config = json.loads(files[CONFIG])
            modules = config.get("target_modules") if isinstance(config, dict) else None
        except ValueError:
            modules = None  # the registry's own checks name what is wrong with the file
        if isinstance(modules, list):
            check_targets({str(m) for m in modules}, targets)
    tmp = Path(tempfile.mkdtemp(prefix="rmn-upload-"))
    try:
        for name in FILES:
            (tmp / name).write_bytes(files[name])
        return registry.register(tmp, base_model_dir=model_dir, base_model=model_dir.name, **fields)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# vLLM fuses these projections into one layer: naming the layer or any of its parts gives LoRA to all of them
PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def check_targets(modules: set[str], targets: set[str]) -> None:
    """InvalidAdapter unless every module in ``modules`` is one the engine applies LoRA to (``targets``:
    ``engine.lora_target_modules`` as the replica resolved it; a fused layer or any part of it stands for all
    its parts, as in vLLM: :data:`PACKED`)."""
    covered = set(targets)
    for layer, parts in PACKED.items():
        if layer in covered or covered & set(parts):
            covered |= {layer, *parts}
    extra = sorted(modules - covered)
    if extra:
        raise InvalidAdapter(
            f"this deployment applies LoRA to {sorted(targets)} only (engine.lora_target_modules, read when the "
            f"engine replicas started) and the adapter also targets {extra}; register it offline (rmn adapters "
            "register) and restart the engine replicas, or widen engine.lora_target_modules"
        )


def adapter_view(registry: AdapterRegistry, adapter_id: str) -> dict[str, Any]:
    """An adapter's metadata: the latest manifest's fields and every version (sha256, rank, created, retired)."""
    states = registry.states(adapter_id)  # one listing for every version (a directory is not cached)
    if not states:
        raise AdapterNotFound(f"adapter {adapter_id!r} is not registered")
    versions = list(states)
    rows = []
    for v in versions:
        m = registry.manifest(adapter_id, v)
        rows.append(
            {
                "version": v,
                "sha256": m.sha256,
                "rank": m.rank,
                "alpha": m.alpha,
                "target_modules": m.target_modules,
                "created": registry.created(adapter_id, v),
                "retired": registry.retired(adapter_id, v) if states[v] else None,
            }
        )
    last = registry.manifest(adapter_id, versions[-1])
    live = [r["version"] for r in rows if r["retired"] is None]
    return {
        "id": adapter_id,
        "kind": last.kind.value,
        "owner": last.owner,
        "visibility": last.visibility.value,
        "description": last.description,
        "base_model": last.base_model,
        "latest": live[-1] if live else None,
        "versions": rows,
    }


def may_see(tenant: Tenant | None, view: dict[str, Any]) -> bool:
    """Whether ``tenant`` may read the adapter's metadata (the same rule as using it)."""
    return tenant is None or tenant.may_use(view["id"], view["owner"], view["visibility"] == "private")


def may_retire(tenant: Tenant | None, view: dict[str, Any]) -> bool:
    """Admins retire anything; a manufacturer its own adapters; nobody else (an open gate: anyone)."""
    return (
        tenant is None
        or tenant.role == Role.admin
        or (tenant.role == Role.manufacturer and view["owner"] == tenant.id)
    )
