"""The OpenAI surface and the probes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``POST /v1/federation/resolve``, ``GET /healthz`` (liveness), ``GET /readyz`` (an engine replica answers),
``GET /ui`` (the planner page)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from federation.graph import composition_graph
from serving.errors import Overloaded, error_response
from serving.gateway.dispatch import generate
from serving.gateway.http import gateway, read_body, request_id

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the router process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: an engine replica answers within 5 s."""
    try:
        await asyncio.wait_for(gateway(request).engine.stats.remote(), timeout=5)
    except Exception as e:
        return error_response(Overloaded(f"engine not ready: {type(e).__name__}", 5))
    return JSONResponse({"status": "ready"})


@router.get("/ui")
async def ui() -> Response:
    """The planner web UI (one static page; it calls this API with the key the user enters)."""
    from importlib.resources import files

    return HTMLResponse((files("serving") / "ui" / "index.html").read_text())


def _model(model_id: str, owner: str, root: str, parent: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": int(time.time()),
        "owned_by": owner,
        "root": root,
        "parent": parent,
        **extra,
    }


@router.get("/v1/models")
async def models(request: Request) -> Response:
    """The base model and the adapters this caller may use (latest version), OpenAI ``list`` shape."""
    gw = gateway(request)
    tenant = await gw.admit(request)
    base = gw.cfg.model.served_name
    data = [_model(base, "rmn-lora", base, None)]
    if tenant is not None:
        data.append(_model(f"{base}:auto", "rmn-lora", f"{base}:auto", base, kind="federated"))
    for m in await asyncio.to_thread(gw.registry.list):
        if gw.gate.visible(tenant, m):
            data.append(
                _model(f"{base}:{m.id}", m.owner, f"{base}:{m.id}@{m.version}", base, kind=m.kind.value)
            )
    return JSONResponse({"object": "list", "data": data})


@router.post("/v1/federation/resolve")
async def resolve(request: Request) -> Response:
    """The stack, composite id and composition graph (JSON + Graphviz DOT) a request would get."""
    gw = gateway(request)
    tenant = await gw.admit(request)
    res = await gw.resolve(tenant, await read_body(request), request_id(request))
    return JSONResponse(composition_graph(gw.cfg.model.served_name, res, tenant))


@router.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    """OpenAI chat completions (stream or not)."""
    return await generate(gateway(request), "chat", request)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """OpenAI completions (stream or not)."""
    return await generate(gateway(request), "completion", request)
