"""The clean-room deployment: one :class:`cleanroom.CleanRoom` per configured retailer.

DuckDB files are single-writer, so this deployment runs one replica, on the node that holds the files;
the router reaches it through a handle (nothing is read across nodes). Answers are plain dicts
``{"status": int, "body": ..., "headers": {...}}`` so the router can relay them without knowing clean-room
types. Each tenant's queries are rate-limited per retailer (the policy's ``queries_per_minute`` → 429).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cleanroom import BudgetExhausted, CleanRoom, CleanRoomError, PolicyViolation, Query
from federation.ratelimit import RateLimiter
from serving.config import AppConfig
from serving.metrics import CleanRoomMetrics
from serving.vllm_engine import error_body, first_error


class CleanRoomService:
    """Ray Serve deployment class (bound by :func:`serving.app.build_app` when ``cleanroom`` is configured)."""

    def __init__(self, config: AppConfig) -> None:
        if config.cleanroom is None:
            raise ValueError("CleanRoomService needs config.cleanroom")
        self._rooms = {r.policy.retailer: CleanRoom(r.db_path, r.policy) for r in config.cleanroom.retailers}
        self._limiter = RateLimiter()
        self._metrics = CleanRoomMetrics()
        self._market_policy = config.market_policy() if config.comparison else None
        self._markets: OrderedDict[str, dict[str, Any]] = OrderedDict()  # room name -> what prepare returned
        self._work = Path(tempfile.mkdtemp(prefix="rmn-market-rooms-"))
        self._prepare_lock = asyncio.Lock()

    async def prepare_market(self, market_json: str) -> dict[str, Any]:
        """A clean room holding the synthetic market's retailer log (built here, on this replica's node,
        from the seed; harmonised from the retailer's own field names), named ``<retailer>@seed<seed>``.
        The last 8 stay open; returns ``{"retailer": name, "harmonization": {...}}``."""
        from federation.compare import load_retailer_log
        from federation.market import MarketConfig, generate

        cfg = MarketConfig.model_validate_json(market_json)
        name = f"{cfg.retailer}@seed{cfg.seed}"
        async with self._prepare_lock:
            if name in self._markets:
                self._markets.move_to_end(name)
                return self._markets[name]
            if self._market_policy is None:
                raise ValueError("no comparison section in the config")
            policy = self._market_policy.model_copy(update={"retailer": name})
            work = self._work / name
            work.mkdir(parents=True, exist_ok=True)
            room = CleanRoom(work / "events.duckdb", policy)
            market = await asyncio.to_thread(generate, cfg)
            h = await asyncio.to_thread(load_retailer_log, room, market, work)
            self._rooms[name] = room
            self._markets[name] = {"retailer": name, "harmonization": asdict(h)}
            while len(self._markets) > 8:
                old, _ = self._markets.popitem(last=False)
                self._rooms.pop(old).close()
                shutil.rmtree(self._work / old, ignore_errors=True)
            return self._markets[name]

    def _room(self, retailer: object) -> CleanRoom | dict[str, Any]:
        room = self._rooms.get(retailer) if isinstance(retailer, str) else None
        if room is None:
            return {
                "status": 404,
                "body": error_body(f"no clean room for retailer {retailer!r}", 404, "not_found_error"),
            }
        return room

    async def query(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer ``{"retailer": ..., "query": {...}}`` for ``tenant``."""
        room = self._room(body.get("retailer"))
        if isinstance(room, dict):
            return room
        wait = self._limiter.acquire(f"{tenant}\x00{room.policy.retailer}", room.policy.queries_per_minute)
        if wait > 0:
            self._count(room, "rate_limited")
            msg = f"clean-room rate limit: {room.policy.queries_per_minute} queries/minute for {room.policy.retailer}"
            await asyncio.to_thread(room.audit_refusal, tenant, body.get("query"), msg)
            return {
                "status": 429,
                "body": error_body(msg, 429, "rate_limit_error"),
                "headers": {"retry-after": str(max(1, round(wait)))},
            }
        answer = await asyncio.to_thread(self._answer, room, tenant, body)  # DuckDB work off the event loop
        self._count(room, "accepted" if answer["status"] == 200 else "refused")
        if answer["status"] == 200 and answer["body"]["epsilon_spent"]:
            self._metrics.epsilon.inc(
                answer["body"]["epsilon_spent"], tags={"retailer": room.policy.retailer}
            )
        return answer

    def _count(self, room: CleanRoom, decision: str) -> None:
        self._metrics.queries.inc(tags={"retailer": room.policy.retailer, "decision": decision})

    def _answer(self, room: CleanRoom, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            q = Query.model_validate(body.get("query"))
            result = room.query(tenant, q)
        except ValidationError as e:
            loc, msg = first_error(e)
            message = f"invalid query: {loc}: {msg}"
            room.audit_refusal(tenant, body.get("query"), message)
            return {"status": 400, "body": error_body(message, 400, param=loc)}
        except BudgetExhausted as e:
            return {"status": 403, "body": error_body(str(e), 403, "privacy_budget_exhausted")}
        except PolicyViolation as e:
            return {"status": 400, "body": error_body(str(e), 400, "policy_violation")}
        except CleanRoomError as e:
            return {"status": 500, "body": error_body(str(e), 500, "server_error")}
        return {
            "status": 200,
            "body": {"retailer": room.policy.retailer, "k": room.policy.k, **asdict(result)},
        }

    async def budget(self, tenant: str, retailer: str) -> dict[str, Any]:
        """``tenant``'s differential-privacy budget at ``retailer`` (total, spent, remaining)."""
        room = self._room(retailer)
        if isinstance(room, dict):
            return room
        return {"status": 200, "body": room.budget(tenant)}

    async def schema(self, retailer: str) -> dict[str, Any]:
        """What a tenant may ask of ``retailer``: dimensions, metrics, filters, k, blocked fields."""
        room = self._room(retailer)
        if isinstance(room, dict):
            return room
        p = room.policy
        return {
            "status": 200,
            "body": {
                "retailer": p.retailer,
                "k": p.k,
                "dimensions": p.allowed_dimensions,
                "metrics": p.allowed_metrics,
                "filters": p.filterable,
                "blocked_fields": p.blocked_fields,
                "max_groups": p.max_groups,
                "queries_per_minute": p.queries_per_minute,
                "dp": p.dp.model_dump() if p.dp else None,
            },
        }
