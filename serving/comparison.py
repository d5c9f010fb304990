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

        async def ask(q: dict[str, Any]) -> dict[str, Any]:
            ans: Reply = await self._cleanroom.query.remote(tenant, {"retailer": room, "query": q})
            if not ans.ok:
                raise ComparisonError(ans.message, Relayed.of(ans))
            return dict(ans.body)

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

    async def compare(self, tenant: str, body: dict[str, Any]) -> Reply:
        """Answer a :class:`CompareRequest` body for ``tenant``."""
        try:
            return Reply(200, await run_comparison(tenant, body, self._market_cfg, self._backend))
        except ComparisonError as e:
            return error_reply(e)
