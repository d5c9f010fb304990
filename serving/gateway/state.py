"""The gateway's state: config, the federation gate, the registry's read side, metrics, admission, and the
deployment handles it calls — one object per router replica, shared by every route.

Contract: handles are injected (Serve's ``DeploymentHandle`` in a replica; fakes with the same methods in
the gateway test tier), so nothing here needs Ray to be running. :meth:`Gateway.engine_for` caches one
configured engine handle per model id (bounded LRU) instead of calling ``.options()`` per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from starlette.requests import Request

from adapters import AdapterError, RegistryUnavailable
from federation.access import Gate, Resolution
from federation.errors import NotFound
from federation.tenants import AuthError, Tenant
from serving.adapter_api import adapter_view, may_see
from serving.admission import FairScheduler
from serving.config import AppConfig
from serving.errors import error_fields, status_of
from serving.experiments import Experiments
from serving.gateway.shared import Shared
from serving.metrics import RouterMetrics
from serving.records import Records
from serving.reviews import Reviews
from serving.usage import UsageCounter

HANDLE_CACHE = 1024  # configured engine handles kept (one per model id in use)


def _running(replica_states: dict[Any, int]) -> int:
    """Running replicas in a deployment status' ``replica_states``."""
    return sum(
        int(n) for state, n in replica_states.items() if str(getattr(state, "value", state)) == "RUNNING"
    )


class Gateway:
    """What every route of one router replica works with."""

    def __init__(
        self,
        config: AppConfig,
        engine: Any,
        cleanroom: Any = None,
        comparison: Any = None,
        node: str = "local",
        usage: UsageCounter | None = None,
        replica: tuple[str, str] | None = None,
    ) -> None:
        """``replica``: (app name, replica id) in a Serve replica: limits and backlog are then shared with
        the app's other router replicas (``admission.cluster_wide``); None: this object alone."""
        self.cfg = config
        self.engine, self.cleanroom, self.comparison = engine, cleanroom, comparison
        self.registry = config.adapters.registry(config.engine.max_lora_rank, node)
        self.gate = Gate(
            config.federation,
            self.registry,
            config.model.served_name,
            config.engine.max_lora_rank,
            config.adapters.compress_overflow,
            status_of=status_of,
        )
        self.metrics = RouterMetrics(config.federation.metrics_top_n if config.federation else 20)
        self.records = Records(config.adapters.root, config.adapters.storage_options)  # beside the registry
        self.usage = usage if usage is not None else UsageCounter(records=self.records)
        self.reviews = Reviews(self.records, shared=replica is not None)  # one queue per app in Serve
        self.experiments = Experiments(self.records, shared=replica is not None)
        self._handles: OrderedDict[str, Any] = OrderedDict()
        adm = config.admission
        self.routers = self._configured(config.router_deployment)  # running router replicas, as last read
        self.replica_id = replica[1] if replica is not None else "local"
        self._running_engines: int | None = None
        self._cluster_demand: dict[str, Any] | None = None
        self.scheduler: FairScheduler | None = None
        if adm.enabled:
            weights = {t.id: t.weight for t in config.federation.tenants} if config.federation else {}
            self.scheduler = FairScheduler(
                adm.slots or self.default_slots(None),
                max_wait_s=adm.max_wait_share * config.http.request_timeout_s,
                initial_service_s=adm.initial_token_s,
                max_queue=adm.max_queue,
                weights=weights,
                lease_ttl_s=config.http.request_timeout_s + 30,
                reserve=adm.reserve_slots,
                reserve_window_s=adm.reserve_window_s,
            )
        self.slots_checked = 0.0
        self._slots_task: asyncio.Task[None] | None = None
        self.shared: Shared | None = None
        if replica is not None and adm.cluster_wide:
            self.shared = Shared(
                *replica,
                waiting=self._waiting,
                routers=lambda: self.routers,
                demand=self._demand,
                on_demand=self._apply_demand,
            )
        self.limits = (
            self.shared.limits if self.shared is not None and config.federation is not None else None
        )

    # ---- engine handles and slots ------------------------------------------------------------
    def engine_for(self, lora_name: str) -> Any:
        """The streaming engine handle routed to replicas holding ``lora_name`` ('' = the base model)."""
        handle = self._handles.get(lora_name)
        if handle is None:
            handle = self.engine.options(stream=True, multiplexed_model_id=lora_name)
            self._handles[lora_name] = handle
            while len(self._handles) > HANDLE_CACHE:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(lora_name)
        return handle

    @staticmethod
    def _configured(d: Any) -> int:
        return int(d.autoscaling.min_replicas if d.autoscaling else d.num_replicas)

    def _waiting(self) -> int:
        return self.scheduler.waiting if self.scheduler is not None else 0

    def _demand(self) -> dict[str, int]:
        return self.scheduler.demand() if self.scheduler is not None else {}

    @property
    def cluster_demand(self) -> dict[str, Any] | None:
        """The cluster's demand as the board last reported it (None before the first report)."""
        return self._cluster_demand

    def _apply_demand(self, view: dict[str, Any]) -> None:
        """The cluster's demand arrived (every second): this router's share of the engine slots follows its
        share of the demand, and each tenant's weight its share of that tenant's demand."""
        self._cluster_demand = view
        if self.scheduler is None:
            return
        mine = self._demand()
        tenants = view.get("tenants", {})
        self.scheduler.scale_weights({t: n / tenants[t] for t, n in mine.items() if tenants.get(t)})
        if self.cfg.admission.slots is None:
            self.scheduler.set_slots(self.default_slots(self._running_engines))

    def default_slots(self, running_engines: int | None) -> int:
        """This router replica's share of the engine concurrency (running engine replicas, else the configured
        count, x max_ongoing_requests): by its share of the cluster's demand when the board reports one, else an
        equal share of the running router replicas (:func:`slot_share`)."""
        eng = self.cfg.engine_deployment
        if running_engines is None:
            running_engines = self._configured(eng)
        total = max(running_engines, 1) * eng.max_ongoing_requests
        routers = (self._cluster_demand or {}).get("routers", {})
        return slot_share(total, max(self.routers, 1), routers.get(self.replica_id, 0), sum(routers.values()))

    def refresh_slots(self) -> None:
        """Follow the engine and router deployments' running replicas (autoscaling, replaced replicas), every
        2 s: the controller is read in a background task, so no request waits for it. Starts the backlog
        reports to the board too."""
        if self.shared is not None:
            self.shared.start()
        if self.scheduler is None or self.cfg.admission.slots is not None:
            return
        now = time.monotonic()
        if now - self.slots_checked < 2 or (self._slots_task is not None and not self._slots_task.done()):
            return
        self.slots_checked = now
        self._slots_task = asyncio.get_running_loop().create_task(self._read_running_engines())

    async def _read_running_engines(self) -> None:
        if self.scheduler is None:
            return
        try:
            from ray import serve

            app = serve.get_replica_context().app_name
            status = await asyncio.to_thread(serve.status)
            deployments = status.applications[app].deployments
            running, routers = (_running(deployments[name].replica_states) for name in ("engine", "router"))
        except Exception:  # outside Serve, or the controller is busy: keep the current value
            return
        self.routers = routers or self.routers
        if running:
            self._running_engines = running
            self.scheduler.set_slots(self.default_slots(running))

    # ---- metrics ------------------------------------------------------------------------------
    def record(self, label: str, status: int, started: float) -> None:
        """Count an answer: requests by composition and status, and its latency."""
        self.metrics.requests.inc(tags={"composition": label, "status": str(status)})
        self.metrics.latency.observe(time.monotonic() - started, tags={"composition": label})

    def count_tokens(self, label: str, usage: dict[str, Any] | None) -> None:
        """Add a completion's prompt and output tokens to the token counters."""
        if usage:
            tags = {"composition": label}
            self.metrics.tokens.inc(usage.get("prompt_tokens", 0), tags={**tags, "direction": "in"})
            self.metrics.tokens.inc(usage.get("completion_tokens", 0), tags={**tags, "direction": "out"})

    # ---- who is asking ----------------------------------------------------------------------
    async def admit(self, request: Request) -> Tenant | None:
        """The calling tenant (None when the gate is open); AuthError / RateLimited (cluster-wide limits when
        this replica shares them, else its own bucket)."""
        if self.limits is None:
            return self.gate.admit(request.headers.get("authorization"))
        tenant = self.gate.authenticate(request.headers.get("authorization"))
        if tenant is not None:
            self.gate.check_rate(tenant, await self.limits.acquire(tenant.id, tenant.rate_limit_per_minute))
        return tenant

    async def tenant(self, request: Request, what: str) -> Tenant:
        """The authenticated, rate-admitted tenant; ``what`` needs one (AuthError on an open gate)."""
        tenant = await self.admit(request)
        if tenant is None:  # config validation (cleanroom/comparison need federation) makes this unreachable
            raise AuthError(f"{what} need an authenticated tenant")
        return tenant

    async def resolve(self, tenant: Tenant | None, body: dict[str, Any], request_id: str) -> Resolution:
        """The gate's resolution; in a worker thread when the registry is an object store (a listing past its
        TTL waits on the network, and the event loop serving every other request must not)."""
        if self.registry.store.remote:
            return await asyncio.to_thread(self.gate.resolve, tenant, body, request_id)
        return self.gate.resolve(tenant, body, request_id)

    def audit_refusal(
        self,
        event: str,
        request: Request,
        request_id: str,
        error: BaseException,
        tenant: Tenant | None,
        adapter: str | None = None,
    ) -> None:
        """Audit a refused adapter operation: who (the authenticated caller; when authentication itself
        refused, whoever the key belongs to) and why."""
        who = tenant.id if tenant is not None else self.gate.identify(request.headers.get("authorization"))
        self.gate.audit(
            event=event, request_id=request_id, tenant=who, adapter=adapter, **error_fields(error)
        )

    # ---- adapters' read side ------------------------------------------------------------------
    def adapter_views(self) -> list[dict[str, Any]]:
        """Every registered adapter's view (in a worker thread: an object store answers over the network)."""
        views = (self.view(adapter_id) for adapter_id in self.registry.ids())
        return [v for v in views if v is not None]

    def view(self, adapter_id: str) -> dict[str, Any] | None:
        """An adapter's view, None when it is not registered or unreadable (an unreachable store raises)."""
        try:
            return adapter_view(self.registry, adapter_id)
        except RegistryUnavailable:
            raise
        except AdapterError:
            return None

    def visible_adapter(self, tenant: Tenant | None, adapter_id: str) -> dict[str, Any]:
        """The adapter's view, or NotFound (also when the caller may not see it: no existence leak)."""
        view = self.view(adapter_id)
        if view is None or not may_see(tenant, view):
            raise NotFound(f"adapter {adapter_id!r} does not exist")
        return view

    async def with_usage(self, views: list[dict[str, Any]]) -> None:
        """Add cluster-wide usage counts to adapter views: per version and ``requests`` in total."""
        usage = await self.usage.read([v["id"] for v in views])
        for view in views:
            for row in view["versions"]:
                row["usage"] = usage.get(f"{view['id']}@{row['version']}", {"requests": 0, "last_used": None})
            view["requests"] = sum(row["usage"]["requests"] for row in view["versions"])


def slot_share(total: int, routers: int, mine: int, demand: int) -> int:
    """A router's engine slots: ``total`` x its share of the cluster's ``demand`` (requests running or waiting in
    all routers) when there is demand, at least one slot (a request arriving at an idle router starts at once)
    and at most ``total``; with no demand anywhere, an equal share of ``routers``."""
    if demand <= 0:
        return max(1, total // max(routers, 1))
    return min(total, max(1, round(total * mine / demand)))
