"""The comparison workflow, written once: validate, build the market's clean room, run both plans IN
PARALLEL, score them on the truth, pick the SKUs whose ad lines get written.

Where each step runs is the backend's business (:class:`CompareBackend`): :class:`LocalBackend` runs
them in this process (threads; ``rmn compare`` without a server), the Ray Serve comparison deployment
(:mod:`serving.comparison`) through the planner and clean-room deployments. The clean-room side is one
function too (:func:`cleanroom_side`), whatever carries its queries.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from planning.compare import (
    CompareRequest,
    build_result,
    cleanroom_queries,
    load_retailer_log,
    market_config,
    over_seeds,
    plan_from_cleanroom,
    plan_full,
    wants,
)
from planning.harmonize import Harmonization
from planning.market import BrandData, Market, MarketConfig, generate
from planning.planner import Plan, PlanningError, PlanRequest


class ComparisonError(ValueError):
    """The comparison cannot be made, and why; ``cause``: the refusal of a side's data source when that is
    the reason (a clean-room error, passed on as it is: the answer is that refusal's)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause

    def __reduce__(self) -> tuple[type[ComparisonError], tuple[str, BaseException | None]]:
        return (type(self), (str(self), self.cause))


class InvalidComparison(ComparisonError):
    """The comparison request itself is malformed."""


@dataclass(frozen=True)
class Room:
    """The clean room holding a market's retailer log: its name and how its header was harmonised."""

    retailer: str
    harmonization: Harmonization


@dataclass
class SideOutcome:
    """One plan, or why there is none (``error``; ``cause``: the exception behind it)."""

    plan: Plan | None = None
    seconds: float = 0.0
    view: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cause: BaseException | None = None


class CompareBackend(Protocol):
    """Where the steps of a comparison run."""

    async def prepare_room(self, market_json: str) -> Room:
        """The clean room of the market's retailer log (built once per market)."""
        ...

    async def plan_full(self, market_json: str, manufacturer: str, req: PlanRequest) -> SideOutcome:
        """The full-data plan (the brand's own tables)."""
        ...

    async def plan_cleanroom(
        self, tenant: str, room: str, market_json: str, manufacturer: str, req: PlanRequest, own_data: bool
    ) -> SideOutcome:
        """The clean-room plan (clean-room answers; with ``own_data`` the brand's own margins and stock too)."""
        ...

    async def market(self, market_json: str) -> Market:
        """The market itself (its truth scores the plans)."""
        ...


Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Asks the clean room one query; returns the answer body or raises :class:`ComparisonError`."""


def full_side(market: Market, manufacturer: str, req: PlanRequest) -> SideOutcome:
    """The full-data plan from ``market``'s tables of ``manufacturer`` (blocking: run it in a thread)."""
    try:
        plan, seconds = plan_full(market.brand_data(manufacturer), req)
    except PlanningError as e:
        return SideOutcome(error=f"full-data plan: {e}", cause=e)
    return SideOutcome(plan, seconds)


def _refused_by_policy(e: ComparisonError) -> bool:
    """Whether the clean room refused a query under its policy (HTTP 400: not an outage, not a denial)."""
    from cleanroom.errors import AccessDenied, PolicyViolation

    cause = e.cause
    if isinstance(cause, PolicyViolation):
        return not isinstance(cause, AccessDenied)
    return getattr(cause, "status", None) == 400  # relayed from the clean-room deployment


async def cleanroom_answers(ask: Ask, manufacturer: str) -> dict[str, dict[str, Any]]:
    """The answers to :func:`planning.compare.cleanroom_queries` through ``ask``. The per-day query only shapes
    the curves: when the policy refuses it (e.g. exact mode's differencing check against earlier releases), the
    plan goes on without it and ``answers["daily_refused"]`` holds the reason; any other failure is raised."""
    answers: dict[str, dict[str, Any]] = {}
    for name, q in cleanroom_queries(manufacturer).items():
        if not wants(name, answers):
            continue
        try:
            answers[name] = await ask(q)
        except ComparisonError as e:
            if name != "daily" or not _refused_by_policy(e):
                raise
            answers["daily_refused"] = {"reason": str(e)}
    return answers


async def cleanroom_side(
    ask: Ask,
    manufacturer: str,
    req: PlanRequest,
    history_days: int,
    horizon_days: int,
    own: BrandData | None = None,
) -> SideOutcome:
    """The clean-room plan: the queries of :func:`cleanroom_queries` through ``ask``, then fit + LP (with the
    brand's own margins and stock from ``own`` when given)."""
    try:
        answers = await cleanroom_answers(ask, manufacturer)
    except ComparisonError as e:
        return SideOutcome(error=f"clean room: {e}", cause=e.cause)
    try:
        plan, view, seconds = await asyncio.to_thread(
            plan_from_cleanroom, answers, req, history_days, horizon_days, own
        )
    except PlanningError as e:
        return SideOutcome(error=f"clean-room plan: {e}", cause=e)
    return SideOutcome(plan, seconds, view)


async def run_comparison(
    tenant: str, body: dict[str, Any], base: MarketConfig, backend: CompareBackend
) -> dict[str, Any]:
    """The comparison's JSON body (:class:`ComparisonResult` + ``timing.planner_*_s`` + ``top_skus``);
    raises :class:`ComparisonError` for a bad request or a side that cannot plan."""
    try:
        req = CompareRequest.model_validate(body)
        cfg = market_config(base, req)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidComparison(f"invalid request: {loc}: {first['msg']}") from e
    except ValueError as e:
        raise InvalidComparison(str(e)) from e
    market_json = cfg.model_dump_json()
    room = await backend.prepare_room(market_json)
    plan_req = PlanRequest.model_validate(req.model_dump(include=set(PlanRequest.model_fields)))

    async def timed(call: Awaitable[SideOutcome]) -> tuple[SideOutcome, float]:
        t = time.perf_counter()
        out = await call
        return out, time.perf_counter() - t

    started = time.perf_counter()
    full_side = timed(backend.plan_full(market_json, req.manufacturer, plan_req))
    clean_side = timed(
        backend.plan_cleanroom(
            tenant, room.retailer, market_json, req.manufacturer, plan_req, req.cleanroom_margins
        )
    )
    if req.parallel:
        (full, full_s), (clean, clean_s) = await asyncio.gather(full_side, clean_side)
    else:
        (full, full_s), (clean, clean_s) = await full_side, await clean_side
    wall = time.perf_counter() - started
    if full.plan is None or full.error is not None:
        raise ComparisonError(full.error or "no full-data plan", full.cause)
    if clean.plan is None or clean.error is not None:
        raise ComparisonError(clean.error or "no clean-room plan", clean.cause)
    market = await backend.market(market_json)
    result = build_result(
        req, market, (full.plan, full_s), (clean.plan, clean.view, clean_s), room.harmonization, wall
    )
    out = result.model_dump(mode="json")
    out["timing"]["planner_full_s"] = round(full.seconds, 4)
    out["timing"]["planner_cleanroom_s"] = round(clean.seconds, 4)
    seen: dict[str, dict[str, Any]] = {}
    for a in out["full"]["allocation"]:
        seen.setdefault(a["sku"], a)
    out["top_skus"] = [
        {"sku": sku, "category": market.facts.category[market.skus.index(sku)]}
        for sku in list(seen)[: req.creatives]
    ]
    if req.seeds > 1:
        this: dict[str, Any] = {
            "seed": cfg.seed,
            "full": out["full"]["score"]["profit"],
            "cleanroom": out["cleanroom"]["score"]["profit"],
        }
        rows = [this] + [
            await _more_seed(tenant, req, cfg.model_copy(update={"seed": cfg.seed + i}), plan_req, backend)
            for i in range(1, req.seeds)
        ]
        out["over_seeds"] = over_seeds(rows)
        out["verdict"] += "; " + out["over_seeds"]["sentence"]
    return out


async def _more_seed(
    tenant: str, req: CompareRequest, cfg: MarketConfig, plan_req: PlanRequest, backend: CompareBackend
) -> dict[str, Any]:
    """One more market of a multi-seed comparison: both planners on ``cfg``'s market (its own clean room),
    their plans' true profits."""
    from planning.scoring import score

    market_json = cfg.model_dump_json()
    room = await backend.prepare_room(market_json)
    full, clean = await asyncio.gather(
        backend.plan_full(market_json, req.manufacturer, plan_req),
        backend.plan_cleanroom(
            tenant, room.retailer, market_json, req.manufacturer, plan_req, req.cleanroom_margins
        ),
    )
    for side, name in ((full, "full-data"), (clean, "clean-room")):
        if side.plan is None or side.error is not None:
            raise ComparisonError(f"seed {cfg.seed}: {side.error or f'no {name} plan'}", side.cause)
    assert full.plan is not None and clean.plan is not None
    market = await backend.market(market_json)
    return {
        "seed": cfg.seed,
        "full": score(full.plan, market).profit,
        "cleanroom": score(clean.plan, market).profit,
    }


def room_asker(room: Any, tenant: str, manufacturer: str) -> Ask:
    """``ask(query) -> answer`` on an open :class:`cleanroom.CleanRoom` as ``tenant`` planning for
    ``manufacturer`` (queries run in a thread); a refusal or failure is a :class:`ComparisonError` carrying the
    clean room's error."""
    from cleanroom import CleanRoomError, Querier, Query

    who = Querier(tenant, room.policy.brand_scope(tenant, "manufacturer", manufacturer=manufacturer))

    async def ask(q: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await asyncio.to_thread(room.query, who, Query.model_validate(q))
        except CleanRoomError as e:
            raise ComparisonError(str(e), e) from e
        return {"k": room.policy.k, **asdict(result)}

    return ask


class LocalBackend:
    """Every step in this process: the clean room is a DuckDB file under ``work``, plans run in threads
    (NumPy, HiGHS and DuckDB release the GIL for most of their work)."""

    def __init__(self, policy: Any, work: Path) -> None:
        self._policy = policy  # a cleanroom.CleanRoomPolicy for the market's retailer
        self._work = work
        self._markets: dict[str, Market] = {}
        self._rooms: dict[str, Any] = {}
        self._harmonized: dict[str, Harmonization] = {}

    async def market(self, market_json: str) -> Market:
        if market_json not in self._markets:
            cfg = MarketConfig.model_validate_json(market_json)
            self._markets[market_json] = await asyncio.to_thread(generate, cfg)
        return self._markets[market_json]

    async def prepare_room(self, market_json: str) -> Room:
        from cleanroom import CleanRoom

        market = await self.market(market_json)
        cfg = market.config
        name = f"{cfg.retailer}@seed{cfg.seed}"
        if name in self._harmonized:
            return Room(name, self._harmonized[name])
        self._work.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{cfg.retailer}-seed{cfg.seed}-", dir=self._work))
        room = CleanRoom(work / "events.duckdb", self._policy, noise_seed=cfg.seed)  # simulated noise
        h = await asyncio.to_thread(load_retailer_log, room, market, work)
        self._rooms[name], self._harmonized[name] = room, h
        return Room(name, h)

    async def plan_full(self, market_json: str, manufacturer: str, req: PlanRequest) -> SideOutcome:
        market = await self.market(market_json)
        return await asyncio.to_thread(full_side, market, manufacturer, req)

    async def plan_cleanroom(
        self, tenant: str, room: str, market_json: str, manufacturer: str, req: PlanRequest, own_data: bool
    ) -> SideOutcome:
        ask = self.asker(room, tenant, manufacturer)
        market = await self.market(market_json)
        own = market.brand_data(manufacturer) if own_data else None
        return await cleanroom_side(
            ask, manufacturer, req, market.config.days, market.config.horizon_days, own
        )

    def asker(self, room: str, tenant: str, manufacturer: str) -> Ask:
        """``ask(query) -> answer`` on the prepared clean room ``room`` as ``tenant`` planning for
        ``manufacturer``; a refusal or failure is a :class:`ComparisonError` carrying the clean room's error."""
        return room_asker(self._rooms[room], tenant, manufacturer)

    def close(self) -> None:
        """Close the clean rooms this backend opened."""
        for room in self._rooms.values():
            room.close()
        self._rooms.clear()


def compare_local(base: MarketConfig, req: CompareRequest, policy: Any, work: Path) -> dict[str, Any]:
    """The whole comparison in this process (no Ray, no LLM): a clean room for the market in ``work``
    under ``policy`` (a :class:`cleanroom.CleanRoomPolicy`), both plans in parallel threads. Returns the
    same JSON body as ``POST /v1/plans/compare`` (without the written text)."""
    backend = LocalBackend(policy, work)
    try:
        return asyncio.run(run_comparison(req.manufacturer, req.model_dump(), base, backend))
    finally:
        backend.close()
