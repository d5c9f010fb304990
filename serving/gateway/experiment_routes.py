"""A/B experiments over HTTP (serving/experiments.py): ``POST|GET /v1/experiments``, ``GET
/v1/experiments/{id}``, ``POST /v1/experiments/{id}/pause|resume|stop`` and ``POST /v1/feedback``. Everything is
scoped to the calling tenant (another tenant's experiment is a 404) and audited; a chat or completion request
joins an experiment with model ``experiment:<id>`` and its unit id in ``user``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.errors import InvalidRequest
from federation.tenants import Tenant
from serving.experiments import ExperimentSpec, Feedback
from serving.gateway.http import gateway, read_model, request_id
from serving.gateway.state import Gateway

router = APIRouter()
_STATES = {"pause": "paused", "resume": "running", "stop": "stopped"}
PREFIX = "experiment:"


def _audit(gw: Gateway, request: Request, tenant: Tenant, event: str, **fields: Any) -> None:
    gw.gate.audit(event=event, request_id=request_id(request), tenant=tenant.id, **fields)


@router.post("/v1/experiments")
async def create_experiment(request: Request) -> Response:
    """Define an experiment: ``{"id", "arms": [{"name", "model", "share"}, ...]}`` (the first arm is the control)."""
    gw = gateway(request)
    tenant = await gw.tenant(request, "experiments")
    spec = await read_model(request, ExperimentSpec)
    exp = await gw.experiments.call("create", tenant.id, spec)
    _audit(
        gw, request, tenant, "experiment.create", experiment=exp["id"], arms=[a["name"] for a in exp["arms"]]
    )
    return JSONResponse(exp, status_code=201)


@router.get("/v1/experiments")
async def list_experiments(request: Request) -> Response:
    """The calling tenant's experiments with their per-arm results."""
    gw = gateway(request)
    tenant = await gw.tenant(request, "experiments")
    return JSONResponse({"experiments": await gw.experiments.call("all_of", tenant.id)})


@router.get("/v1/experiments/{exp_id}")
async def get_experiment(request: Request, exp_id: str) -> Response:
    """One experiment: arms, counts, rates with 95 % intervals, z-test against the control."""
    gw = gateway(request)
    tenant = await gw.tenant(request, "experiments")
    await gw.experiments.flush()  # this router's latest assignments count too
    return JSONResponse(await gw.experiments.call("get", tenant.id, exp_id[:64]))


@router.post("/v1/experiments/{exp_id}/{action}")
async def change_experiment(request: Request, exp_id: str, action: str) -> Response:
    """Pause (the control serves everyone, uncounted), resume, or stop (requests 410; results stay)."""
    gw = gateway(request)
    tenant = await gw.tenant(request, "experiments")
    if action not in _STATES:
        raise InvalidRequest(f"action must be pause, resume or stop, not {action[:32]!r}")
    exp = await gw.experiments.call("set_state", tenant.id, exp_id[:64], _STATES[action])
    gw.experiments.forget(tenant.id, exp["id"])
    _audit(gw, request, tenant, f"experiment.{action}", experiment=exp["id"])
    return JSONResponse(exp)


@router.post("/v1/feedback")
async def feedback(request: Request) -> Response:
    """An outcome of an answered request: ``{"request_id", "outcome": click|accept|conversion|rating, "value"}``."""
    gw = gateway(request)
    tenant = await gw.tenant(request, "feedback")
    outcome = await read_model(request, Feedback)
    await gw.experiments.flush()
    joined = await gw.experiments.call("feedback", tenant.id, outcome)
    gw.metrics.experiment_outcomes.inc(
        tags={
            "experiment": f"{tenant.id}/{joined['experiment']}",
            "arm": joined["arm"],
            "outcome": joined["outcome"],
        }
    )
    return JSONResponse(joined)


async def join_experiment(
    gw: Gateway, tenant: Tenant | None, body: dict[str, Any], rid: str
) -> dict[str, str]:
    """For a request to model ``experiment:<id>``: pick the arm by ``user``, serve its model, record the
    assignment; the headers naming them. Other requests: nothing."""
    model = body.get("model")
    if not isinstance(model, str) or not model.startswith(PREFIX) or tenant is None:
        return {}
    unit = body.pop("user", None)
    if not isinstance(unit, str) or not unit or len(unit) > 256:
        raise InvalidRequest("an experiment request needs its unit id (a user or session) in 'user'")
    exp_id = model[len(PREFIX) :][:64]
    arm, counted = await gw.experiments.arm_for(tenant.id, exp_id, unit)
    body["model"] = arm["model"]
    if counted:
        gw.experiments.note(rid, tenant.id, exp_id, arm["name"])
        gw.metrics.experiment_requests.inc(tags={"experiment": f"{tenant.id}/{exp_id}", "arm": arm["name"]})
    return {"x-rmn-experiment": exp_id, "x-rmn-arm": arm["name"]}
