"""The data surfaces: the clean room (``POST /v1/cleanroom/query``, ``GET /v1/cleanroom/schema|budget``), the
comparison (``POST /v1/plans/compare``), field harmonisation (``POST /v1/harmonize``) and the governance check
(``POST /v1/governance/check``). Bodies are pydantic models; the clean-room and comparison deployments answer
with a :class:`serving.replies.Reply` relayed as it is."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.errors import PermissionDenied
from federation.tenants import Role
from planning.creatives import check_line
from serving.errors import NotConfigured
from serving.gateway.dispatch import complete
from serving.gateway.http import gateway, read_body, read_model, request_id
from serving.replies import Reply
from serving.writer import write_texts

router = APIRouter()


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
    """``{"lines": [...]}``: ad lines to check against the brand-governance rules."""

    model_config = ConfigDict(extra="forbid")
    lines: list[Annotated[str, StringConstraints(max_length=1000)]] = Field(min_length=1, max_length=20)


async def _cleanroom(request: Request, method: str) -> Response:
    gw = gateway(request)
    if gw.cleanroom is None:
        raise NotConfigured("no clean room is configured on this deployment")
    tenant = await gw.tenant(request, "clean-room queries")
    retailer = request.query_params.get("retailer", "")
    if method == "query":
        answer: Reply = await gw.cleanroom.query.remote(tenant.id, await read_body(request))
    elif method == "budget":
        answer = await gw.cleanroom.budget.remote(tenant.id, retailer, tenant.role == "admin")
    else:
        answer = await gw.cleanroom.schema.remote(retailer)
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
    market's ground truth; add a rationale and ad lines written through the composed adapters."""
    gw, rid = gateway(request), request_id(request)
    if gw.comparison is None:
        raise NotConfigured("planning is not configured on this deployment")
    tenant = await gw.tenant(request, "plans")
    body = await read_body(request)
    if tenant.role != Role.admin and body.get("manufacturer") != tenant.id:
        raise PermissionDenied(
            f"tenant {tenant.id!r} may plan only for its own brand, not {body.get('manufacturer')!r}"
        )
    answer: Reply = await gw.comparison.compare.remote(tenant.id, body)
    if answer.ok and answer.body["request"]["write_text"] and gw.cfg.comparison is not None:
        writer = functools.partial(complete, gw, tenant, request_id=rid)
        await write_texts(writer, gw.cfg.comparison, gw.cfg.model.served_name, answer.body)
    return JSONResponse(answer.body, status_code=answer.status)


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
    """The brand-governance rule check the comparison applies to its ad lines, for any lines:
    ``{"lines": [...]}`` (1-20 strings of at most 1,000 characters) -> one verdict per line and the rules."""
    gw = gateway(request)
    if gw.cfg.comparison is None:
        raise NotConfigured("planning (and its governance rules) is not configured here")
    await gw.tenant(request, "governance checks")
    body = await read_model(request, GovernanceBody)
    g = gw.cfg.comparison.governance
    return JSONResponse(
        {
            "verdicts": [check_line(x, g.banned_words, g.max_chars, g.min_chars) for x in body.lines],
            "rules": g.model_dump(),
        }
    )
