"""The data surfaces: the clean room (``POST /v1/cleanroom/query``, ``GET /v1/cleanroom/schema|budget``), the
comparison (``POST /v1/plans/compare``), a brand's own files (``POST /v1/plans/files``), field harmonisation
(``POST /v1/harmonize``), the governance check (``POST /v1/governance/check``) and its review queue (``/v1/governance/reviews``). Bodies are pydantic models; the clean-room and comparison deployments answer
with a :class:`serving.replies.Reply` relayed as it is."""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import asdict
from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.errors import InvalidRequest, PermissionDenied
from federation.tenants import Role
from planning.compare import ComparisonResult
from planning.governance import check_text, combine
from planning.report import MEDIA_TYPES, render
from serving.errors import NotConfigured
from serving.gateway.dispatch import call_deployment, complete
from serving.gateway.http import gateway, read_body, read_model, request_id
from serving.replies import Reply
from serving.writer import model_claims, write_texts

router = APIRouter()
REPORT_FORMATS = ("json", *MEDIA_TYPES)  # what /v1/plans/compare answers in


class HarmonizeBody(BaseModel):
    """``{"fields": [...]}``: a retailer export's own field names, distinct."""

    model_config = ConfigDict(extra="forbid")
    fields: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=200
    )

    @field_validator("fields")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) < len(v):
            raise ValueError("field names must be distinct")
        return v


class GovernanceBody(BaseModel):
    """``{"lines": [...], "retailer": ..., "brand": ...}``: ad lines to check under the policy of a brand on
    a retailer's network (a manufacturer checks as its own brand)."""

    model_config = ConfigDict(extra="forbid")
    lines: list[Annotated[str, StringConstraints(max_length=1000)]] = Field(min_length=1, max_length=20)
    retailer: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    brand: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class DecisionBody(BaseModel):
    """``{"decision": "approve" | "reject", "reason": "..."}``: a reviewer's decision on a pending line."""

    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


async def _cleanroom(request: Request, method: str) -> Response:
    gw = gateway(request)
    if gw.cleanroom is None:
        raise NotConfigured("no clean room is configured on this deployment")
    tenant = await gw.tenant(request, "clean-room queries")
    retailer = request.query_params.get("retailer", "")
    room = gw.cleanroom
    if method == "query":
        body = await read_body(request)
        call = lambda: room.query.remote(tenant.id, body)  # noqa: E731
    elif method == "budget":
        call = lambda: room.budget.remote(tenant.id, retailer, tenant.role == "admin")  # noqa: E731
    else:
        call = lambda: room.schema.remote(retailer)  # noqa: E731
    answer: Reply = await call_deployment(gw, call, "clean-room", request_id(request))
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


@router.post("/v1/cleanroom/query")
async def cleanroom_query(request: Request) -> Response:
    """Aggregate query over a retailer's data under its policy: ``{"retailer": ..., "query": {...}}``."""
    return await _cleanroom(request, "query")


@router.get("/v1/cleanroom/schema")
async def cleanroom_schema(request: Request) -> Response:
    """What the caller may ask of ``?retailer=...``."""
    return await _cleanroom(request, "schema")


@router.get("/v1/cleanroom/budget")
async def cleanroom_budget(request: Request) -> Response:
    """The caller's differential-privacy budget at ``?retailer=...``: total, spent, remaining."""
    return await _cleanroom(request, "budget")


@router.post("/v1/plans/compare")
async def compare(request: Request) -> Response:
    """Plan a budget with the brand's full data and through the clean room, in parallel; score both on the
    market's ground truth; add a rationale and ad lines written through the composed adapters. ``?format=html``
    or ``pdf`` answers the same comparison as a report (planning/report.py) instead of JSON."""
    gw, rid = gateway(request), request_id(request)
    fmt = request.query_params.get("format", "json")
    if fmt not in REPORT_FORMATS:
        raise InvalidRequest(f"format must be one of {sorted(REPORT_FORMATS)}, got {fmt!r}")
    if gw.comparison is None:
        raise NotConfigured("planning is not configured on this deployment")
    tenant = await gw.tenant(request, "plans")
    body = await read_body(request)
    if tenant.role != Role.admin and body.get("manufacturer") != tenant.id:
        raise PermissionDenied(
            f"tenant {tenant.id!r} may plan only for its own brand, not {body.get('manufacturer')!r}"
        )
    planner = gw.comparison
    answer: Reply = await call_deployment(
        gw, lambda: planner.compare.remote(tenant.id, body), "comparison", rid
    )
    if answer.ok and answer.body["request"]["write_text"] and gw.cfg.comparison is not None:
        writer = functools.partial(complete, gw, tenant, request_id=rid)
        await write_texts(writer, gw.cfg.comparison, gw.cfg.model.served_name, answer.body)
        market = answer.body["market"]
        for line in answer.body.get("creatives", []):  # lines the rules could not clear wait for a person
            if line.get("decision") == "pending":
                review = await gw.reviews.call(
                    "submit", tenant.id, market["manufacturer"], market["retailer"], line
                )
                line["review_id"] = review["id"]
    if answer.ok and fmt != "json":
        return _report(answer.body, fmt)
    return JSONResponse(answer.body, status_code=answer.status)


def _report(result: dict[str, Any], fmt: str) -> Response:
    content, media_type = render(result, fmt)
    if "market" in result:
        tag = "-".join(str(result["market"].get(k, "")) for k in ("manufacturer", "seed"))
    else:  # a plan from a brand's files
        tag = "files-" + str(
            (result.get("cleanroom") or {}).get("manufacturer")
            or PurePath(str(result["data"]["directory"])).name
        )
    name = "rmn-plan-" + re.sub(r"[^A-Za-z0-9_.-]", "_", tag)[:80] + f".{fmt}"  # a header value: no quotes
    disposition = f'{"attachment" if fmt == "pdf" else "inline"}; filename="{name}"'
    return Response(content, media_type=media_type, headers={"content-disposition": disposition})


@router.post("/v1/plans/report")
async def plan_report(request: Request) -> Response:
    """A result the caller already has (the JSON of ``POST /v1/plans/compare``, or of ``POST /v1/plans/files``)
    as a report, ``?format=pdf`` (default) or ``html``, without planning again (no epsilon spent): what the UI
    downloads."""
    await gateway(request).tenant(request, "plans")
    fmt = request.query_params.get("format", "pdf")
    body = await read_body(request)
    if "backtest" in body and "market" not in body:  # a files plan: the renderer names what is missing
        return _report(body, fmt)
    result = await read_model(request, ComparisonResult)  # the body is read once, kept by the request
    return _report(result.model_dump(mode="json"), fmt)


@router.post("/v1/plans/files")
async def plan_files(request: Request) -> Response:
    """Plan from a brand's own tables, as ``rmn compare --data`` does (multipart: ``products``, ``sales`` and
    ``media`` files, CSV or Parquet; text fields: the plan request's — budget, scenario, target, ... — and
    ``horizon_days``, ``holdout_days``, ``cleanroom`` (a retailer: its clean room's side beside, both backtested)
    and ``manufacturer`` (the brand's name in the retailer's data, default the tenant's id). The files are the
    caller's own, so the name only matters to the clean room, whose policy decides whether that brand is the
    caller's (403 otherwise). ``?format=html`` or ``pdf`` answers the plan as a report (planning/report.py)."""
    from serving.adapter_api import read_upload

    gw, rid = gateway(request), request_id(request)
    fmt = request.query_params.get("format", "json")
    if fmt not in REPORT_FORMATS:
        raise InvalidRequest(f"format must be one of {sorted(REPORT_FORMATS)}, got {fmt!r}")
    if gw.comparison is None or gw.cfg.comparison is None:
        raise NotConfigured("planning is not configured on this deployment")
    tenant = await gw.tenant(request, "plans")
    files, fields = await read_upload(
        request, gw.cfg.comparison.max_upload_bytes, ("products", "sales", "media"), max_fields=16
    )
    manufacturer = fields.pop("manufacturer", None) or tenant.id
    planner = gw.comparison
    answer: Reply = await call_deployment(
        gw, lambda: planner.plan_files.remote(tenant.id, manufacturer, files, fields), "planning", rid
    )
    if answer.ok and fmt != "json":
        return _report(answer.body, fmt)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


@router.post("/v1/harmonize")
async def harmonize_fields(request: Request) -> Response:
    """Map a retailer export's own field names onto the clean room's event schema, as loads do:
    ``{"fields": [...]}`` (1-200 distinct names of at most 64 characters) -> mapping, unmapped, missing."""
    from cleanroom.schema import EVENT_COLUMNS
    from planning.harmonize import harmonize

    await gateway(request).tenant(request, "harmonisation")
    body = await read_model(request, HarmonizeBody)
    return JSONResponse(asdict(harmonize(body.fields, list(EVENT_COLUMNS))))


@router.post("/v1/governance/check")
async def governance_check(request: Request) -> Response:
    """Brand safety for any lines (the check the comparison's ad lines get): one verdict per line —
    ``rejected``, ``pending`` (queued for a reviewer: ``review_id``) or ``ok`` — and the policy applied."""
    gw = gateway(request)
    if gw.cfg.comparison is None:
        raise NotConfigured("planning (and its governance rules) is not configured here")
    tenant = await gw.tenant(request, "governance checks")
    body = await read_model(request, GovernanceBody)
    brand = body.brand
    if tenant.role == Role.manufacturer:
        if brand not in (None, tenant.id):
            raise PermissionDenied(f"tenant {tenant.id!r} checks lines as its own brand, not {brand!r}")
        brand = tenant.id
    governance = gw.cfg.comparison.governance
    policy = governance.policy(body.retailer, brand)
    verdicts = [check_text(line, policy) for line in body.lines]
    if governance.model_check:  # the base model's opinion, combined by the documented rule
        ask = functools.partial(complete, gw, tenant, request_id=request_id(request))
        found = await asyncio.gather(*(model_claims(ask, gw.cfg.model.served_name, x) for x in body.lines))
        verdicts = [combine(v, claims, policy) for v, claims in zip(verdicts, found, strict=True)]
    for v in verdicts:
        if v["decision"] == "pending":
            review = await gw.reviews.call("submit", tenant.id, brand, body.retailer, v)
            v["review_id"] = review["id"]
    return JSONResponse({"verdicts": verdicts, "policy": policy.model_dump()})


_REVIEWERS = (Role.reviewer, Role.admin)


@router.get("/v1/governance/reviews")
async def governance_reviews(request: Request) -> Response:
    """The review queue, newest first (``?state=pending|approved|rejected``): a reviewer or an admin sees
    every line, other tenants the lines they submitted."""
    gw = gateway(request)
    tenant = await gw.tenant(request, "reviews")
    state = request.query_params.get("state")
    if state not in (None, "pending", "approved", "rejected"):
        raise InvalidRequest(f"state must be pending, approved or rejected, not {state!r}")
    who = None if tenant.role in _REVIEWERS else tenant.id
    return JSONResponse({"reviews": await gw.reviews.call("list", who, state)})


@router.post("/v1/governance/reviews/{review_id}")
async def governance_decide(request: Request, review_id: str) -> Response:
    """A reviewer approves or rejects a pending line with a reason (once; audited)."""
    gw, rid = gateway(request), request_id(request)
    tenant = await gw.tenant(request, "reviews")
    if tenant.role not in _REVIEWERS:
        raise PermissionDenied(f"tenant {tenant.id!r} is not a reviewer (role reviewer or admin)")
    body = await read_model(request, DecisionBody)
    review = await gw.reviews.call(
        "decide", review_id[:64], tenant.id, body.decision == "approve", body.reason
    )
    gw.gate.audit(
        event="governance.review",
        request_id=rid,
        tenant=tenant.id,
        review=review["id"],
        decision=review["state"],
        reason=body.reason,
        submitted_by=review["submitted_by"],
        brand=review["brand"],
    )
    return JSONResponse(review)
