"""The adapter API: ``POST /v1/adapters`` (upload), ``POST /v1/adapters/train`` (a training job),
``GET /v1/adapters/jobs/{id}``, ``GET /v1/adapters``, ``GET /v1/adapters/{id}``,
``DELETE /v1/adapters/{id}/versions/{v}`` (retire). Who may do what: :mod:`serving.adapter_api`. Every
write, and every refused write, is audited with who asked and why."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.errors import NotFound, PermissionDenied
from federation.tenants import Role, Tenant
from serving.adapter_api import FIELDS, FILES, may_retire, may_see, read_upload, upload_fields
from serving.errors import EngineFailed, Overloaded
from serving.gateway.http import gateway, request_id
from serving.gateway.ray_errors import is_backpressure, replica_lost
from serving.replies import Reply

router = APIRouter()


@router.post("/v1/adapters")
async def adapters_register(request: Request) -> Response:
    """Register an adapter (multipart: ``adapter_config.json``, ``adapter_model.safetensors`` files and the
    manifest fields id, kind, visibility, description; admins also owner) as a new version, validated on an
    engine replica against the base model: 201 + manifest."""
    gw, rid = gateway(request), request_id(request)
    tenant: Tenant | None = None  # known once authenticated: the audit names who was refused
    try:
        tenant = await gw.tenant(request, "adapter uploads")
        limit = gw.cfg.adapters.max_upload_bytes
        files, fields = await read_upload(request, limit, FILES, max_fields=len(FIELDS))
        manifest_fields = upload_fields(tenant, fields, gw.registry)
    except Exception as e:
        gw.audit_refusal("adapter_register", request, rid, e, tenant)
        raise
    try:
        answer: Reply = await gw.engine.register_adapter.remote(files, manifest_fields)
        gw.registry.invalidate(manifest_fields["id"])  # this replica serves the new version at once
    except Exception as e:  # the engine replica died or refused the call: nothing was published
        if replica_lost(e) or is_backpressure(e):
            raise Overloaded(f"adapter registration did not run: {e}", 5) from e
        raise EngineFailed(f"adapter registration did not run: {e}") from e
    gw.gate.audit(
        event="adapter_register",
        request_id=rid,
        tenant=tenant.id,
        adapter=f"{manifest_fields['id']}@{manifest_fields['version']}",
        status=answer.status,
        reason=None if answer.ok else answer.message,
    )
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


@router.post("/v1/adapters/train")
async def adapters_train(request: Request) -> Response:
    """Train an adapter on the tenant's private pairs as a cluster job (multipart: a ``data.jsonl`` file of
    ``{"prompt", "response"}`` lines; fields id, kind, description and the TrainSettings fields): 202 + the
    job (serving/training_jobs.py). The result is registered like an upload."""
    import ray

    from serving.training_jobs import JobSpec, board, parse_train_request, placement, submit

    gw, rid = gateway(request), request_id(request)
    tenant: Tenant | None = None
    try:
        tenant = await gw.tenant(request, "training jobs")
        files, fields = await read_upload(
            request, gw.cfg.adapters.max_upload_bytes, ("data.jsonl",), max_fields=20
        )
        settings, manifest, pairs = parse_train_request(
            tenant, fields, files["data.jsonl"], gw.registry, gw.cfg.engine.max_lora_rank
        )
        adapters = gw.cfg.adapters
        free, total = await asyncio.gather(
            asyncio.to_thread(ray.available_resources), asyncio.to_thread(ray.cluster_resources)
        )
        where = placement(adapters.training_device, adapters.training_resources, free, total)
    except Exception as e:
        gw.audit_refusal("adapter_train", request, rid, e, tenant)
        raise
    jobs = board(gw.records)
    job = await jobs.create.remote(tenant.id, manifest["id"], settings.model_dump(), len(pairs))
    spec = JobSpec(
        job["id"],
        str(gw.cfg.model.path),
        gw.cfg.adapters,
        gw.cfg.engine.max_lora_rank,
        pairs,
        settings.model_dump(),
        manifest,
    )
    submit(spec, jobs, where)
    gw.gate.audit(
        event="adapter_train", request_id=rid, tenant=tenant.id, job=job["id"], adapter=manifest["id"]
    )
    return JSONResponse(job, status_code=202, headers={"location": f"/v1/adapters/jobs/{job['id']}"})


@router.get("/v1/adapters/jobs/{job_id}")
async def adapters_job(job_id: str, request: Request) -> Response:
    """A training job's state, step, loss and held-out losses; 404 for another tenant's job."""
    from serving.training_jobs import board

    tenant = await gateway(request).tenant(request, "training jobs")
    job = await board(gateway(request).records).get.remote(job_id) if len(job_id) <= 64 else None
    if job is None or (tenant.role != Role.admin and job["tenant"] != tenant.id):
        raise NotFound(f"no training job {job_id!r}")
    return JSONResponse(job)


@router.get("/v1/adapters")
async def adapters_list(request: Request) -> Response:
    """Every adapter the caller may see, with its versions (private ones of others are not listed)."""
    gw = gateway(request)
    tenant = await gw.admit(request)
    views = [v for v in await asyncio.to_thread(gw.adapter_views) if may_see(tenant, v)]
    await gw.with_usage(views)
    return JSONResponse({"object": "list", "data": views})


@router.get("/v1/adapters/{adapter_id}")
async def adapters_show(adapter_id: str, request: Request) -> Response:
    """One adapter's metadata and versions; 404 when it does not exist or the caller may not see it."""
    gw = gateway(request)
    tenant = await gw.admit(request)
    view = await asyncio.to_thread(gw.visible_adapter, tenant, adapter_id)
    await gw.with_usage([view])
    return JSONResponse(view)


@router.delete("/v1/adapters/{adapter_id}/versions/{version}")
async def adapters_retire(adapter_id: str, version: str, request: Request) -> Response:
    """Retire a version: requests no longer resolve to it (pinned ones get 410); files are kept."""
    gw, rid = gateway(request), request_id(request)
    tenant: Tenant | None = None
    try:
        tenant = await gw.tenant(request, "retiring adapters")
        view = await asyncio.to_thread(gw.visible_adapter, tenant, adapter_id)
        if not may_retire(tenant, view):
            raise PermissionDenied(f"tenant {tenant.id!r} may not retire {adapter_id!r}")
        if version not in [v["version"] for v in view["versions"]]:
            raise NotFound(f"adapter {adapter_id!r} has no version {version!r}")
        record = await asyncio.to_thread(gw.registry.retire, adapter_id, version, tenant.id)
    except Exception as e:
        gw.audit_refusal("adapter_retire", request, rid, e, tenant, f"{adapter_id}@{version}")
        raise
    gw.gate.audit(
        event="adapter_retire",
        request_id=rid,
        tenant=tenant.id,
        adapter=f"{adapter_id}@{version}",
        status=200,
    )
    return JSONResponse({"id": adapter_id, "version": version, "retired": record})
