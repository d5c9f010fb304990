"""The clean-room deployment: one :class:`cleanroom.CleanRoom` per configured retailer.

DuckDB files are single-writer, so this deployment runs one replica, on the node that holds the files;
the router reaches it through a handle (nothing is read across nodes). Callers pass the authenticated
tenant's id; its role, retailer and manufacturer come from the federation config here, and the room's
policy turns them into a brand scope. Answers are :class:`serving.replies.Reply` (status, JSON body,
headers): the router relays them without knowing clean-room types. Each tenant's queries are
rate-limited per retailer (the policy's ``queries_per_minute`` → 429). Market rooms (the comparison's
synthetic retailers) are rebuilt from their seed in a scratch dir, but their ledgers, releases and
audit live under ``cleanroom.state_dir``, keyed by retailer and seed: no restart, rebuild or eviction
resets a budget.
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

from cleanroom import (
    CleanRoom,
    CleanRoomError,
    Querier,
    Query,
)
from federation.errors import InvalidRequest, NotFound, RateLimited, first_error
from federation.ratelimit import RateLimiter
from serving.config import AppConfig
from serving.errors import error_reply
from serving.metrics import CleanRoomMetrics
from serving.replies import Reply


class CleanRoomService:
    """Ray Serve deployment class (bound by :func:`serving.app.build_app` when ``cleanroom`` is configured)."""

    def __init__(self, config: AppConfig) -> None:
        if config.cleanroom is None:
            raise ValueError("CleanRoomService needs config.cleanroom")
        self._rooms = {
            r.policy.retailer: CleanRoom(
                r.db_path, r.policy, storage_options=r.storage_options, memory_limit=r.memory_limit
            )
            for r in config.cleanroom.retailers
        }
        self._tenants = {t.id: t for t in (config.federation.tenants if config.federation else [])}
        self._state = config.cleanroom.state_root() / "market-rooms"
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
        from planning.compare import load_retailer_log
        from planning.market import MarketConfig, generate

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
            # the DuckDB file is scratch (rebuilt from the seed); the state is durable, keyed by name
            room = CleanRoom(work / "events.duckdb", policy, state=self._state / name, noise_seed=cfg.seed)
            market = await asyncio.to_thread(generate, cfg)
            h = await asyncio.to_thread(load_retailer_log, room, market, work)
            self._rooms[name] = room
            self._markets[name] = {"retailer": name, "harmonization": asdict(h)}
            while len(self._markets) > 8:
                old, _ = self._markets.popitem(last=False)
                self._rooms.pop(old).close()
                shutil.rmtree(self._work / old, ignore_errors=True)
            return self._markets[name]

    def _room(self, retailer: object) -> CleanRoom | Reply:
        room = self._rooms.get(retailer) if isinstance(retailer, str) else None
        if room is None:
            return error_reply(NotFound(f"no clean room for retailer {retailer!r}"))
        return room

    async def query(self, tenant: str, body: dict[str, Any]) -> Reply:
        """Answer ``{"retailer": ..., "query": {...}}`` for ``tenant``."""
        room = self._room(body.get("retailer"))
        if isinstance(room, Reply):
            return room
        wait = self._limiter.acquire(f"{tenant}\x00{room.policy.retailer}", room.policy.queries_per_minute)
        if wait > 0:
            self._count(room, "rate_limited")
            msg = f"clean-room rate limit: {room.policy.queries_per_minute} queries/minute for {room.policy.retailer}"
            await asyncio.to_thread(room.audit_refusal, tenant, body.get("query"), msg)
            return error_reply(RateLimited(msg, max(1, round(wait))))
        answer = await asyncio.to_thread(self._answer, room, tenant, body)  # DuckDB work off the event loop
        self._count(room, "accepted" if answer.ok else "refused")
        if answer.ok and answer.body["epsilon_spent"]:
            self._metrics.epsilon.inc(answer.body["epsilon_spent"], tags={"retailer": room.policy.retailer})
            view = await asyncio.to_thread(room.budget, tenant, True)
            if view.get("room_epsilon_budget"):
                used = view["room_epsilon_spent"] / view["room_epsilon_budget"]
                self._metrics.room_used.set(used, tags={"retailer": room.policy.retailer})
        return answer

    def _querier(self, room: CleanRoom, tenant: str) -> Querier:
        """The tenant's identity and brand scope in ``room`` (unknown tenants see nothing)."""
        t = self._tenants.get(tenant)
        if t is None:
            return Querier(tenant, frozenset())
        return Querier(tenant, room.policy.brand_scope(tenant, t.role.value, t.retailer, t.manufacturer))

    def _count(self, room: CleanRoom, decision: str) -> None:
        self._metrics.queries.inc(tags={"retailer": room.policy.retailer, "decision": decision})

    def _answer(self, room: CleanRoom, tenant: str, body: dict[str, Any]) -> Reply:
        try:
            q = Query.model_validate(body.get("query"))
            result = room.query(self._querier(room, tenant), q)
        except ValidationError as e:
            loc, msg = first_error(e)
            message = f"invalid query: {loc}: {msg}"
            room.audit_refusal(tenant, body.get("query"), message)
            return error_reply(InvalidRequest(message), param=loc)
        except CleanRoomError as e:  # refusals; QueryFailed: audited as failed (and charged, if it was)
            return error_reply(e)
        return Reply(200, {"retailer": room.policy.retailer, "k": room.policy.k, **asdict(result)})

    async def info(self) -> dict[str, Any]:
        """This replica's Ray actor name, its open rooms and where their durable state lives (ops, tests)."""
        import ray

        return {
            "actor": ray.get_runtime_context().get_actor_name(),
            "rooms": sorted(self._rooms),
            "market_state": str(self._state),
        }

    async def budget(self, tenant: str, retailer: str, room_view: bool = False) -> Reply:
        """``tenant``'s differential-privacy budget at ``retailer`` (total, spent, remaining, available); the
        room-wide figures only with ``room_view`` (admins)."""
        room = self._room(retailer)
        if isinstance(room, Reply):
            return room
        return Reply(200, room.budget(tenant, room_view))

    async def schema(self, retailer: str) -> Reply:
        """What a tenant may ask of ``retailer``: dimensions, metrics, filters, k, blocked fields."""
        room = self._room(retailer)
        if isinstance(room, Reply):
            return room
        p = room.policy
        return Reply(
            200,
            {
                "retailer": p.retailer,
                "k": p.k,
                "dimensions": p.allowed_dimensions,
                "metrics": p.allowed_metrics,
                "filters": p.filterable,
                "blocked_fields": p.blocked_fields,
                "max_groups": p.max_groups,
                "queries_per_minute": p.queries_per_minute,
                "mode": p.mode,
                "mode_label": "differential privacy (noisy answers, privacy budget)"
                if p.dp_on
                else "exact aggregates: trusted partners only",
                "dp": p.dp.model_dump() if p.dp_on else None,
                "benchmark": p.benchmark.model_dump() if p.benchmark else None,
            },
        )
