"""Planner and comparison deployments (Ray Serve): ``POST /v1/plans/compare`` behind the router.

The comparison deployment validates the request, has the clean-room deployment build the market's room
(on its own node, from the seed: no file crosses nodes), then fans out the two plans IN PARALLEL through
the planner deployment's handle (two replicas by default): the full-data plan from the brand's tables, the
clean-room plan from clean-room answers fetched through the clean-room deployment. Both are scored on the
market's truth, which only this deployment holds. Answers are ``{"status": int, "body": ...}``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle

from federation.compare import (
    CompareRequest,
    build_result,
    cleanroom_queries,
    market_config,
    plan_from_cleanroom,
    plan_full,
    wants,
)
from federation.harmonize import Harmonization
from federation.market import Market, MarketConfig, generate
from federation.planner import PlanningError, PlanRequest
from serving.config import AppConfig
from serving.vllm_engine import error_body, first_error


@functools.lru_cache(maxsize=8)
def _market(config_json: str) -> Market:
    return generate(MarketConfig.model_validate_json(config_json))


def _bad_request(message: str) -> dict[str, Any]:
    return {"status": 400, "body": error_body(message, 400, "invalid_request_error")}


class PlannerService:
    """Makes one plan per call: ``full`` (brand tables) or ``cleanroom`` (clean-room answers only)."""

    def __init__(self, config: AppConfig, cleanroom: DeploymentHandle) -> None:
        self._cleanroom = cleanroom

    async def plan_full(self, market_json: str, manufacturer: str, req: dict[str, Any]) -> dict[str, Any]:
        """The full-data plan: this replica regenerates the market from the seed and reads only the
        brand's tables from it."""
        data = _market(market_json).brand_data(manufacturer)
        try:
            plan, seconds = await asyncio.to_thread(plan_full, data, PlanRequest.model_validate(req))
        except PlanningError as e:
            return {"error": f"full-data plan: {e}"}
        return {"plan": plan, "seconds": seconds}

    async def plan_cleanroom(
        self, tenant: str, room: str, market_json: str, manufacturer: str, req: dict[str, Any]
    ) -> dict[str, Any]:
        """The clean-room plan, from the answers of the clean-room deployment alone."""
        cfg = MarketConfig.model_validate_json(market_json)
        answers: dict[str, dict[str, Any]] = {}
        for name, q in cleanroom_queries(manufacturer).items():
            if not wants(name, answers):
                continue
            ans = await self._cleanroom.query.remote(tenant, {"retailer": room, "query": q})
            if ans["status"] != 200:
                return {"error": f"clean room: {ans['body']['error']['message']}", "status": ans["status"]}
            answers[name] = ans["body"]
        try:
            plan, view, seconds = await asyncio.to_thread(
                plan_from_cleanroom, answers, PlanRequest.model_validate(req), cfg.days, cfg.horizon_days
            )
        except PlanningError as e:
            return {"error": f"clean-room plan: {e}"}
        return {"plan": plan, "view": view, "seconds": seconds}


class ComparisonService:
    """Runs both plans side by side and scores them (see the module contract)."""

    def __init__(self, config: AppConfig, planner: DeploymentHandle, cleanroom: DeploymentHandle) -> None:
        if config.comparison is None:
            raise ValueError("ComparisonService needs config.comparison")
        self._market_cfg = config.comparison.market
        self._planner = planner
        self._cleanroom = cleanroom

    async def compare(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a :class:`CompareRequest` body for ``tenant``."""
        try:
            req = CompareRequest.model_validate(body)
            cfg = market_config(self._market_cfg, req)
        except ValidationError as e:
            loc, msg = first_error(e)
            return _bad_request(f"invalid request: {loc}: {msg}")
        except ValueError as e:
            return _bad_request(str(e))
        market_json = cfg.model_dump_json()
        room = await self._cleanroom.prepare_market.remote(market_json)
        plan_req = PlanRequest.model_validate(req.model_dump(include=set(PlanRequest.model_fields)))
        started = time.perf_counter()

        async def timed(call: Any) -> tuple[dict[str, Any], float]:
            t = time.perf_counter()
            out = await call
            return out, time.perf_counter() - t

        (full, full_s), (clean, clean_s) = await asyncio.gather(
            timed(self._planner.plan_full.remote(market_json, req.manufacturer, plan_req.model_dump())),
            timed(
                self._planner.plan_cleanroom.remote(
                    tenant, room["retailer"], market_json, req.manufacturer, plan_req.model_dump()
                )
            ),
        )
        wall = time.perf_counter() - started
        for side in (full, clean):
            if "error" in side:
                status = side.get("status", 400)
                return {"status": status, "body": error_body(side["error"], status, "planning_error")}
        market = await asyncio.to_thread(_market, market_json)
        h = Harmonization(**room["harmonization"])
        result = build_result(
            req, market, (full["plan"], full_s), (clean["plan"], clean["view"], clean_s), h, wall
        )
        body_out = result.model_dump(mode="json")
        body_out["timing"]["planner_full_s"] = round(full["seconds"], 4)
        body_out["timing"]["planner_cleanroom_s"] = round(clean["seconds"], 4)
        body_out["top_skus"] = [
            {"sku": a["sku"], "category": market.facts.category[market.skus.index(a["sku"])]}
            for a in _top_skus(body_out["full"]["allocation"], req.creatives)
        ]
        return {"status": 200, "body": body_out}


def _top_skus(allocation: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for a in allocation:
        seen.setdefault(a["sku"], a)
    return list(seen.values())[:n]
