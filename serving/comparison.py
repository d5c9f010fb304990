"""Planner and comparison deployments (Ray Serve): ``POST /v1/plans/compare`` behind the router.

The workflow is :func:`planning.workflow.run_comparison`; here is only where its steps run.
The comparison deployment has the clean-room deployment build the market's room (on its own node, from
the seed: no file crosses nodes), then fans out the two plans IN PARALLEL through the planner
deployment's handle (two replicas by default): the full-data plan from the brand's tables, the
clean-room plan from answers fetched through the clean-room deployment. Both are scored on the market's
truth, which only the comparison deployment holds. Answers are :class:`serving.replies.Reply`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from ray.serve.handle import DeploymentHandle

from planning.harmonize import Harmonization
from planning.market import Market, MarketConfig, generate
from planning.planner import PlanRequest
from planning.workflow import (
    ComparisonError,
    Room,
    SideOutcome,
    cleanroom_side,
    full_side,
    run_comparison,
)
from serving.config import AppConfig
from serving.errors import Relayed, error_reply
from serving.replies import Reply


@functools.lru_cache(maxsize=8)
def _market(config_json: str) -> Market:
    return generate(MarketConfig.model_validate_json(config_json))


def room_ask(cleanroom: DeploymentHandle, tenant: str, room: str) -> Any:
    """``ask(query) -> answer`` on clean room ``room`` through the clean-room deployment as ``tenant``; its error
    answers become :class:`ComparisonError` carrying the relayed status."""

    async def ask(q: dict[str, Any]) -> dict[str, Any]:
        ans: Reply = await cleanroom.query.remote(tenant, {"retailer": room, "query": q})
        if not ans.ok:
            raise ComparisonError(ans.message, Relayed.of(ans))
        return dict(ans.body)

    return ask


class PlannerService:
    """Makes one plan per call: ``full`` (brand tables) or ``cleanroom`` (clean-room answers only)."""

    def __init__(self, config: AppConfig, cleanroom: DeploymentHandle) -> None:
        self._cleanroom = cleanroom

    async def plan_full(self, market_json: str, manufacturer: str, req: PlanRequest) -> SideOutcome:
        """The full-data plan: this replica regenerates the market from the seed and reads only the
        brand's tables from it."""
        market = await asyncio.to_thread(_market, market_json)
        return await asyncio.to_thread(full_side, market, manufacturer, req)

    async def plan_cleanroom(
        self, tenant: str, room: str, market_json: str, manufacturer: str, req: PlanRequest, own_data: bool
    ) -> SideOutcome:
        """The clean-room plan from the answers of the clean-room deployment (with ``own_data``: and the
        brand's own margins and stock, from its tables of the market regenerated here)."""

        ask = room_ask(self._cleanroom, tenant, room)
        cfg = MarketConfig.model_validate_json(market_json)
        own = None
        if own_data:
            own = (await asyncio.to_thread(_market, market_json)).brand_data(manufacturer)
        return await cleanroom_side(ask, manufacturer, req, cfg.days, cfg.horizon_days, own)


class _ServeBackend:
    """The workflow's steps through the planner and clean-room deployments."""

    def __init__(self, planner: DeploymentHandle, cleanroom: DeploymentHandle) -> None:
        self._planner, self._cleanroom = planner, cleanroom

    async def prepare_room(self, market_json: str) -> Room:
        room: dict[str, Any] = await self._cleanroom.prepare_market.remote(market_json)
        return Room(room["retailer"], Harmonization(**room["harmonization"]))

    async def plan_full(self, market_json: str, manufacturer: str, req: PlanRequest) -> SideOutcome:
        out: SideOutcome = await self._planner.plan_full.remote(market_json, manufacturer, req)
        return out

    async def plan_cleanroom(
        self, tenant: str, room: str, market_json: str, manufacturer: str, req: PlanRequest, own_data: bool
    ) -> SideOutcome:
        out: SideOutcome = await self._planner.plan_cleanroom.remote(
            tenant, room, market_json, manufacturer, req, own_data
        )
        return out

    async def market(self, market_json: str) -> Market:
        return await asyncio.to_thread(_market, market_json)


class ComparisonService:
    """Runs :func:`run_comparison` through the planner and clean-room deployments."""

    def __init__(self, config: AppConfig, planner: DeploymentHandle, cleanroom: DeploymentHandle) -> None:
        if config.comparison is None:
            raise ValueError("ComparisonService needs config.comparison")
        self._market_cfg = config.comparison.market
        self._backend = _ServeBackend(planner, cleanroom)
        self._cleanroom = cleanroom

    async def compare(self, tenant: str, body: dict[str, Any]) -> Reply:
        """Answer a :class:`CompareRequest` body for ``tenant``."""
        try:
            return Reply(200, await run_comparison(tenant, body, self._market_cfg, self._backend))
        except ComparisonError as e:
            return error_reply(e)

    async def plan_files(
        self, tenant: str, manufacturer: str, files: dict[str, bytes], fields: dict[str, str]
    ) -> Reply:
        """Answer ``POST /v1/plans/files``: a brand's uploaded tables (``products``, ``sales``, ``media``; CSV, or
        Parquet by its magic bytes) planned as ``rmn compare --data`` plans a directory, written to a temporary
        directory on this replica's node and removed after; with ``cleanroom`` (a retailer), the clean-room side
        through the clean-room deployment as ``tenant``, named ``manufacturer`` in the retailer's data."""
        import tempfile
        from pathlib import Path

        from pydantic import ValidationError

        from federation.errors import InvalidRequest, first_error
        from planning.brand_files import files_plan, load_brand_dir, with_cleanroom

        try:
            req, horizon, holdout, retailer = _files_fields(fields)
            with tempfile.TemporaryDirectory(prefix="rmn-brand-files-") as work:
                for name, data in files.items():
                    suffix = ".parquet" if data[:4] == b"PAR1" else ".csv"
                    (Path(work) / f"{name}{suffix}").write_bytes(data)
                loaded = await asyncio.to_thread(load_brand_dir, work, manufacturer, horizon)
            body = await asyncio.to_thread(files_plan, loaded, req, holdout, "upload")
            if retailer:
                body = await with_cleanroom(body, loaded, room_ask(self._cleanroom, tenant, retailer), req)
            return Reply(200, body)
        except ValidationError as e:
            loc, msg = first_error(e)
            return error_reply(InvalidRequest(f"invalid field {loc}: {msg}"))
        except (ValueError, ComparisonError) as e:  # InvalidRequest, BrandDataError, PlanningError, refusals
            return error_reply(e)


FILES_FIELDS = ("horizon_days", "holdout_days", "cleanroom")


def _files_fields(fields: dict[str, str]) -> tuple[PlanRequest, int, int | None, str | None]:
    """(plan request, horizon days, holdout days or None, retailer or None) from the upload's text fields."""
    from federation.errors import InvalidRequest

    allowed = set(PlanRequest.model_fields) | set(FILES_FIELDS)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown form fields {unknown}; allowed: {', '.join(sorted(allowed))}")
    req = PlanRequest.model_validate({k: v for k, v in fields.items() if k in PlanRequest.model_fields})

    def days(name: str, default: int | None) -> int | None:
        raw = fields.get(name)
        if raw in (None, ""):
            return default
        if not raw.isdigit() or not 1 <= int(raw) <= 365:
            raise InvalidRequest(f"{name} must be a whole number of days from 1 to 365, got {raw!r}")
        return int(raw)

    return req, days("horizon_days", 28) or 28, days("holdout_days", None), fields.get("cleanroom") or None
