"""The OpenAI-compatible ingress (federation router): authenticate, pick the stack, route, stream.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``POST /v1/federation/resolve``, ``POST|GET /v1/adapters``, ``GET /v1/adapters/{id}``, ``DELETE /v1/adapters/{id}/versions/{v}``,
``POST /v1/harmonize``, ``POST /v1/governance/check``, ``GET /healthz`` (liveness), ``GET /readyz`` (an engine replica answers).
Every answer carries ``x-request-id``; generations also ``x-rmn-model`` (the version-pinned stack that
served it), ``x-rmn-composite`` (its content-addressed id) and ``x-rmn-replica``. Errors use OpenAI's
shape: 400 malformed, 401 no/invalid key, 403 forbidden component, 404 unknown model, 429 rate limit,
503 overloaded or engine replica lost (both with Retry-After), 504 past the deadline. The router never
reads adapter weights: engine replicas compose and load them on their own node.

Under pressure: generations pass a :class:`serving.admission.FairScheduler` (fair per-tenant queues, a fast
503 when the estimated wait is too long); a request whose engine replica dies or drains before anything
reached the client (non-streaming: before the answer; streaming: before the first chunk) is retried once on
another replica, and answered 503 + Retry-After if that fails too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from adapters import AdapterError, RegistryUnavailable
from federation.access import Gate, Resolution
from federation.errors import GateError
from federation.graph import composition_graph
from federation.planning.creatives import check_line
from federation.tenants import Role, Tenant
from serving.adapter_api import FIELDS, FILES, adapter_view, may_retire, may_see, read_upload, upload_fields
from serving.admission import FairScheduler, Lease, Shed
from serving.config import AppConfig
from serving.metrics import RouterMetrics
from serving.node import node_name
from serving.replies import Body, Head, Reply, error_body
from serving.usage import UsageCounter
from serving.writer import Completion, write_texts

log = logging.getLogger("ray.serve")
api = FastAPI(title="rmn-lora", version="0.1.0")


@api.exception_handler(RegistryUnavailable)
async def _store_unavailable(request: Request, exc: RegistryUnavailable) -> Response:
    """Any route that reached an unreachable adapter store (after retries): 503, retry later."""
    return JSONResponse(
        error_body(f"adapter registry unavailable: {exc}", 503, "service_unavailable"),
        status_code=503,
        headers={"retry-after": "5"},
    )


def _error(
    message: str, status: int, err_type: str = "invalid_request_error", headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, status, err_type), status_code=status, headers=headers)


def _is_backpressure(e: BaseException) -> bool:
    """True for Serve's queue-full rejection, however the handle wraps it."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, BackPressureError) or "BackPressureError" in type(seen).__name__:
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__
    return False


_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)


class _EnginesFull(Exception):
    """Serve refused a dispatched request (its queue is full): the engines have fewer slots than the
    scheduler thought. Nothing reached the client."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _replica_lost(e: BaseException) -> bool:
    """True when the engine replica died, became unreachable or was shutting down (the request never ran
    to completion there, so running it elsewhere is safe before anything reached the client)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, _LOST) or type(seen).__name__ in ("ActorDiedError", "ActorUnavailableError"):
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__
    return False


def _cost(body: dict[str, Any], default: int) -> float:
    """A request's cost for admission: 1 + the output tokens it asks for (malformed values: the default;
    the engine answers them 400)."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked < 1_000_000:
        return 1.0 + asked
    return 1.0 + default


def _cancel(gen: Any) -> None:
    """Best-effort cancel; Serve's ``cancel()`` re-raises a failed assignment, which is no news here."""
    with contextlib.suppress(Exception):
        gen.cancel()


def _request_id(request: Request) -> str:
    """The request's id: the client's ``x-request-id``, else the one Serve's proxy generated (and puts
    in the request's headers and on the answer), else a new one (outside Serve)."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex


async def _read_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GateError(400, f"request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise GateError(400, "request body is nested too deeply") from e
    if not isinstance(body, dict):
        raise GateError(400, "request body must be a JSON object")
    return body


@serve.ingress(api)
class Router:
    """Ray Serve ingress deployment class (bound by :func:`serving.app.build_app`)."""

    def __init__(
        self,
        engine: DeploymentHandle,
        config: AppConfig,
        cleanroom: DeploymentHandle | None = None,
        comparison: DeploymentHandle | None = None,
    ) -> None:
        self._engine = engine
        self._cleanroom = cleanroom
        self._comparison = comparison
        self._cfg = config
        self._registry = config.adapters.registry(config.engine.max_lora_rank, node_name())
        self._gate = Gate(
            config.federation,
            self._registry,
            config.model.served_name,
            config.engine.max_lora_rank,
            config.adapters.compress_overflow,
        )
        self._metrics = RouterMetrics(config.federation.metrics_top_n if config.federation else 20)
        self._usage = UsageCounter()
        adm = config.admission
        self._scheduler: FairScheduler | None = None
        if adm.enabled:
            weights = {t.id: t.weight for t in config.federation.tenants} if config.federation else {}
            self._scheduler = FairScheduler(
                adm.slots or self._default_slots(None),
                max_wait_s=adm.max_wait_share * config.http.request_timeout_s,
                initial_service_s=adm.initial_token_s,
                max_queue=adm.max_queue,
                weights=weights,
                lease_ttl_s=config.http.request_timeout_s + 30,
            )
        self._slots_checked = 0.0
        self._slots_task: asyncio.Task[None] | None = None

    def _default_slots(self, running_engines: int | None) -> int:
        """Engine concurrency per router replica: running engine replicas (else the configured count)
        x max_ongoing_requests / router replicas."""
        eng, rtr = self._cfg.engine_deployment, self._cfg.router_deployment
        if running_engines is None:
            running_engines = eng.autoscaling.min_replicas if eng.autoscaling else eng.num_replicas
        routers = rtr.autoscaling.min_replicas if rtr.autoscaling else rtr.num_replicas
        return max(1, max(running_engines, 1) * eng.max_ongoing_requests // max(routers, 1))

    def _refresh_slots(self) -> None:
        """Follow the engine deployment's running replicas (autoscaling, replaced replicas), every 2 s:
        the controller is read in a background task, so no request waits for it."""
        if self._scheduler is None or self._cfg.admission.slots is not None:
            return
        now = time.monotonic()
        if now - self._slots_checked < 2 or (self._slots_task is not None and not self._slots_task.done()):
            return
        self._slots_checked = now
        self._slots_task = asyncio.get_running_loop().create_task(self._read_running_engines())

    async def _read_running_engines(self) -> None:
        if self._scheduler is None:
            return
        try:
            app = serve.get_replica_context().app_name
            status = await asyncio.to_thread(serve.status)
            states = status.applications[app].deployments["engine"].replica_states
            running = sum(
                int(n) for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING"
            )
        except Exception:  # outside Serve, or the controller is busy: keep the current value
            return
        if running:
            self._scheduler.set_slots(self._default_slots(running))

    # ---- probes ----------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the router process answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        """Readiness: an engine replica answers within 5 s."""
        try:
            await asyncio.wait_for(self._engine.stats.remote(), timeout=5)
        except Exception as e:
            return _error(f"engine not ready: {type(e).__name__}", 503, "service_unavailable")
        return JSONResponse({"status": "ready"})

    @api.get("/ui")
    async def ui(self) -> Response:
        """The planner web UI (one static page; it calls this API with the key the user enters)."""
        from importlib.resources import files

        return HTMLResponse((files("serving") / "ui" / "index.html").read_text())

    # ---- models and resolution --------------------------------------------------------------
    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        """The base model and the adapters this caller may use (latest version), OpenAI ``list`` shape."""
        try:
            tenant = self._gate.admit(request.headers.get("authorization"))
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        base, now = self._cfg.model.served_name, int(time.time())
        data = [
            {
                "id": base,
                "object": "model",
                "created": now,
                "owned_by": "rmn-lora",
                "root": base,
                "parent": None,
            }
        ]
        if tenant is not None:
            data.append(
                {
                    "id": f"{base}:auto",
                    "object": "model",
                    "created": now,
                    "owned_by": "rmn-lora",
                    "root": f"{base}:auto",
                    "parent": base,
                    "kind": "federated",
                }
            )
        for m in await asyncio.to_thread(self._registry.list):
            if self._gate.visible(tenant, m):
                data.append(
                    {
                        "id": f"{base}:{m.id}",
                        "object": "model",
                        "created": now,
                        "owned_by": m.owner,
                        "root": f"{base}:{m.id}@{m.version}",
                        "parent": base,
                        "kind": m.kind.value,
                    }
                )
        return JSONResponse({"object": "list", "data": data})

    @api.post("/v1/federation/resolve")
    async def resolve(self, request: Request) -> Response:
        """The stack, composite id and composition graph (JSON + Graphviz DOT) a request would get."""
        request_id = _request_id(request)
        try:
            tenant = self._gate.admit(request.headers.get("authorization"))
            body = await _read_body(request)
            res = await self._resolve(tenant, body, request_id)
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        return JSONResponse(composition_graph(self._cfg.model.served_name, res, tenant))

    # ---- clean room ------------------------------------------------------------------------
    @api.post("/v1/cleanroom/query")
    async def cleanroom_query(self, request: Request) -> Response:
        """Aggregate query over a retailer's data under its policy: ``{"retailer": ..., "query": {...}}``."""
        return await self._cleanroom_call(request, "query")

    @api.get("/v1/cleanroom/schema")
    async def cleanroom_schema(self, request: Request) -> Response:
        """What the caller may ask of ``?retailer=...``."""
        return await self._cleanroom_call(request, "schema")

    @api.get("/v1/cleanroom/budget")
    async def cleanroom_budget(self, request: Request) -> Response:
        """The caller's differential-privacy budget at ``?retailer=...``: total, spent, remaining."""
        return await self._cleanroom_call(request, "budget")

    def _tenant(self, request: Request, what: str) -> Tenant:
        """The authenticated, rate-admitted tenant (GateError 401/429); ``what`` needs one."""
        tenant = self._gate.admit(request.headers.get("authorization"))
        if tenant is None:  # config validation (cleanroom/comparison need federation) makes this unreachable
            raise GateError(401, f"{what} need an authenticated tenant", "authentication_error")
        return tenant

    async def _cleanroom_call(self, request: Request, method: str) -> Response:
        if self._cleanroom is None:
            return _error("no clean room is configured on this deployment", 404, "not_found_error")
        try:
            tenant = self._tenant(request, "clean-room queries")
            retailer = request.query_params.get("retailer", "")
            if method == "query":
                answer: Reply = await self._cleanroom.query.remote(tenant.id, await _read_body(request))
            elif method == "budget":
                answer = await self._cleanroom.budget.remote(tenant.id, retailer)
            else:
                answer = await self._cleanroom.schema.remote(retailer)
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)

    # ---- planning ---------------------------------------------------------------------------
    @api.post("/v1/plans/compare")
    async def compare(self, request: Request) -> Response:
        """Plan a budget with the brand's full data and through the clean room, in parallel; score both
        on the market's ground truth; add a rationale and ad lines written through the composed adapters."""
        request_id = _request_id(request)
        if self._comparison is None:
            return _error("planning is not configured on this deployment", 404, "not_found_error")
        try:
            tenant = self._tenant(request, "plans")
            body = await _read_body(request)
            if tenant.role != Role.admin and body.get("manufacturer") != tenant.id:
                raise GateError(
                    403,
                    f"tenant {tenant.id!r} may plan only for its own brand, not {body.get('manufacturer')!r}",
                    "permission_error",
                )
            answer: Reply = await self._comparison.compare.remote(tenant.id, body)
            if answer.ok and answer.body["request"]["write_text"] and self._cfg.comparison is not None:
                writer = functools.partial(self.complete, tenant, request_id=request_id)
                await write_texts(writer, self._cfg.comparison, self._cfg.model.served_name, answer.body)
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        return JSONResponse(answer.body, status_code=answer.status)

    # ---- adapters -----------------------------------------------------------------------------
    @api.post("/v1/adapters")
    async def adapters_register(self, request: Request) -> Response:
        """Register an adapter (multipart: ``adapter_config.json``, ``adapter_model.safetensors`` files and
        the manifest fields id, kind, visibility, description; admins also owner) as a new version,
        validated on an engine replica against the base model: 201 + manifest (serving/adapter_api.py)."""
        request_id = _request_id(request)
        tenant: Tenant | None = None
        try:
            tenant = self._tenant(request, "adapter uploads")
            limit = self._cfg.adapters.max_upload_bytes
            files, fields = await read_upload(request, limit, FILES, max_fields=len(FIELDS))
            manifest_fields = upload_fields(tenant, fields, self._registry)
        except GateError as e:
            return self._refused("adapter_register", request, request_id, e, tenant)
        try:
            answer: Reply = await self._engine.register_adapter.remote(files, manifest_fields)
            self._registry.invalidate(manifest_fields["id"])  # this replica serves the new version at once
        except Exception as e:  # the engine replica died or refused the call: nothing was published
            status = 503 if _replica_lost(e) or _is_backpressure(e) else 500
            return _error(
                f"adapter registration did not run: {e}", status, "server_error", {"retry-after": "5"}
            )
        self._gate.audit(
            event="adapter_register",
            request_id=request_id,
            tenant=tenant.id,
            adapter=f"{manifest_fields['id']}@{manifest_fields['version']}",
            status=answer.status,
            reason=None if answer.ok else answer.body["error"]["message"],
        )
        return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)

    @api.post("/v1/adapters/train")
    async def adapters_train(self, request: Request) -> Response:
        """Train an adapter on the tenant's private pairs as a cluster job (multipart: a ``data.jsonl`` file of
        ``{"prompt", "response"}`` lines; fields id, kind, description and the TrainSettings fields):
        202 + the job (serving/training_jobs.py). The result is registered like an upload."""
        from serving.training_jobs import JobSpec, board, parse_train_request, submit

        request_id = _request_id(request)
        tenant: Tenant | None = None
        try:
            tenant = self._tenant(request, "training jobs")
            limit = self._cfg.adapters.max_upload_bytes
            files, fields = await read_upload(request, limit, ("data.jsonl",), max_fields=20)
            settings, manifest, pairs = parse_train_request(
                tenant, fields, files["data.jsonl"], self._registry, self._cfg.engine.max_lora_rank
            )
        except GateError as e:
            return self._refused("adapter_train", request, request_id, e, tenant)
        jobs = board()
        job = await jobs.create.remote(tenant.id, manifest["id"], settings.model_dump(), len(pairs))
        spec = JobSpec(
            job["id"],
            str(self._cfg.model.path),
            self._cfg.adapters,
            self._cfg.engine.max_lora_rank,
            pairs,
            settings.model_dump(),
            manifest,
        )
        submit(spec, jobs)
        self._gate.audit(
            event="adapter_train",
            request_id=request_id,
            tenant=tenant.id,
            job=job["id"],
            adapter=manifest["id"],
        )
        return JSONResponse(job, status_code=202, headers={"location": f"/v1/adapters/jobs/{job['id']}"})

    @api.get("/v1/adapters/jobs/{job_id}")
    async def adapters_job(self, job_id: str, request: Request) -> Response:
        """A training job's state, step, loss and held-out losses; 404 for another tenant's job."""
        from serving.training_jobs import board

        try:
            tenant = self._tenant(request, "training jobs")
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        job = await board().get.remote(job_id) if len(job_id) <= 64 else None
        if job is None or (tenant.role != Role.admin and job["tenant"] != tenant.id):
            return _error(f"no training job {job_id!r}", 404, "not_found_error")
        return JSONResponse(job)

    @api.get("/v1/adapters")
    async def adapters_list(self, request: Request) -> Response:
        """Every adapter the caller may see, with its versions (private ones of others are not listed)."""
        try:
            tenant = self._gate.admit(request.headers.get("authorization"))
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        views = [v for v in await asyncio.to_thread(self._adapter_views) if may_see(tenant, v)]
        await self._with_usage(views)
        return JSONResponse({"object": "list", "data": views})

    @api.get("/v1/adapters/{adapter_id}")
    async def adapters_show(self, adapter_id: str, request: Request) -> Response:
        """One adapter's metadata and versions; 404 when it does not exist or the caller may not see it."""
        try:
            tenant = self._gate.admit(request.headers.get("authorization"))
            view = await asyncio.to_thread(self._visible_adapter, tenant, adapter_id)
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        await self._with_usage([view])
        return JSONResponse(view)

    @api.delete("/v1/adapters/{adapter_id}/versions/{version}")
    async def adapters_retire(self, adapter_id: str, version: str, request: Request) -> Response:
        """Retire a version: requests no longer resolve to it (pinned ones get 410); files are kept."""
        request_id = _request_id(request)
        tenant: Tenant | None = None
        try:
            tenant = self._tenant(request, "retiring adapters")
            view = await asyncio.to_thread(self._visible_adapter, tenant, adapter_id)
            if not may_retire(tenant, view):
                raise GateError(
                    403, f"tenant {tenant.id!r} may not retire {adapter_id!r}", "permission_error"
                )
            if version not in [v["version"] for v in view["versions"]]:
                raise GateError(404, f"adapter {adapter_id!r} has no version {version!r}", "not_found_error")
            record = await asyncio.to_thread(self._registry.retire, adapter_id, version, tenant.id)
        except GateError as e:
            return self._refused("adapter_retire", request, request_id, e, tenant, f"{adapter_id}@{version}")
        self._gate.audit(
            event="adapter_retire",
            request_id=request_id,
            tenant=tenant.id,
            adapter=f"{adapter_id}@{version}",
            status=200,
        )
        return JSONResponse({"id": adapter_id, "version": version, "retired": record})

    def _refused(
        self,
        event: str,
        request: Request,
        request_id: str,
        e: GateError,
        tenant: Tenant | None,
        adapter: str | None = None,
    ) -> Response:
        """Audit a refused adapter operation (who, if known, and why), then answer it. ``tenant`` is the
        authenticated caller; None when authentication itself refused (401/429): the key is looked up then."""
        who = tenant.id if tenant is not None else self._gate.identify(request.headers.get("authorization"))
        self._gate.audit(
            event=event, request_id=request_id, tenant=who, adapter=adapter, status=e.status, reason=str(e)
        )
        return _error(str(e), e.status, e.err_type, e.headers)

    def _adapter_views(self) -> list[dict[str, Any]]:
        """Every registered adapter's view (in a worker thread: an object store answers over the network)."""
        views = (self._view(adapter_id) for adapter_id in self._registry.ids())
        return [v for v in views if v is not None]

    def _view(self, adapter_id: str) -> dict[str, Any] | None:
        """An adapter's view, None when it is not registered or unreadable (an unreachable store raises)."""
        try:
            return adapter_view(self._registry, adapter_id)
        except RegistryUnavailable:
            raise
        except AdapterError:
            return None

    async def _with_usage(self, views: list[dict[str, Any]]) -> None:
        """Add cluster-wide usage counts to adapter views: per version and ``requests`` in total."""
        usage = await self._usage.read([v["id"] for v in views])
        for view in views:
            for row in view["versions"]:
                row["usage"] = usage.get(f"{view['id']}@{row['version']}", {"requests": 0, "last_used": None})
            view["requests"] = sum(row["usage"]["requests"] for row in view["versions"])

    def _visible_adapter(self, tenant: Tenant | None, adapter_id: str) -> dict[str, Any]:
        """The adapter's view, or GateError 404 (also when the caller may not see it: no existence leak)."""
        view = self._view(adapter_id)
        if view is None or not may_see(tenant, view):
            raise GateError(404, f"adapter {adapter_id!r} does not exist", "not_found_error")
        return view

    @api.post("/v1/harmonize")
    async def harmonize_fields(self, request: Request) -> Response:
        """Map a retailer export's own field names onto the clean room's event schema, as loads do:
        ``{"fields": [...]}`` (1-200 names of at most 64 characters) -> mapping, unmapped, missing."""
        from dataclasses import asdict

        from cleanroom.schema import EVENT_COLUMNS
        from federation.planning.harmonize import harmonize

        try:
            self._tenant(request, "harmonisation")
            body = await _read_body(request)
            fields = body.get("fields")
            if set(body) != {"fields"} or not isinstance(fields, list) or not 1 <= len(fields) <= 200:
                raise GateError(400, 'the body must be {"fields": [1 to 200 field names]} and nothing else')
            if not all(isinstance(x, str) and 0 < len(x) <= 64 for x in fields) or len(set(fields)) < len(
                fields
            ):
                raise GateError(
                    400, "field names must be distinct non-empty strings of at most 64 characters"
                )
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        return JSONResponse(asdict(harmonize(fields, list(EVENT_COLUMNS))))

    @api.post("/v1/governance/check")
    async def governance_check(self, request: Request) -> Response:
        """The brand-governance rule check the comparison applies to its ad lines, for any lines:
        ``{"lines": [...]}`` (1-20 strings of at most 1,000 characters) -> one verdict per line and the rules."""
        if self._cfg.comparison is None:
            return _error(
                "planning (and its governance rules) is not configured here", 404, "not_found_error"
            )
        try:
            self._tenant(request, "governance checks")
            body = await _read_body(request)
            lines = body.get("lines")
            if set(body) != {"lines"} or not isinstance(lines, list) or not 1 <= len(lines) <= 20:
                raise GateError(400, 'the body must be {"lines": [1 to 20 strings]} and nothing else')
            if not all(isinstance(x, str) and len(x) <= 1000 for x in lines):
                raise GateError(400, "every line must be a string of at most 1,000 characters")
        except GateError as e:
            return _error(str(e), e.status, e.err_type, e.headers)
        g = self._cfg.comparison.governance
        return JSONResponse(
            {
                "verdicts": [check_line(x, g.banned_words, g.max_chars, g.min_chars) for x in lines],
                "rules": g.model_dump(),
            }
        )

    async def _resolve(self, tenant: Tenant | None, body: dict[str, Any], request_id: str) -> Resolution:
        """The gate's resolution; in a worker thread when the registry is an object store (a listing past its
        TTL waits on the network, and the event loop serving every other request must not)."""
        if self._registry.store.remote:
            return await asyncio.to_thread(self._gate.resolve, tenant, body, request_id)
        return self._gate.resolve(tenant, body, request_id)

    async def complete(self, tenant: Tenant | None, body: dict[str, Any], request_id: str) -> Completion:
        """One non-streamed chat completion through the federation (for text the router writes itself);
        raises :class:`GateError` when the stack is refused."""
        res = await self._resolve(tenant, body, request_id)
        body.pop("federation", None)
        body["request_id"] = f"{request_id}-{uuid.uuid4().hex[:8]}"
        lora_name = "" if res.stack is None else f"{self._cfg.model.served_name}:{res.stack.text}"
        handle = self._engine.options(stream=True, multiplexed_model_id=lora_name)
        gen: Any = handle.generate.remote("chat", body)
        try:
            head: Head = await gen.__anext__()
            item: Body = await gen.__anext__()
        finally:
            _cancel(gen)
        return Completion(head.status, item.body, head.lora_name or lora_name)

    # ---- generation ------------------------------------------------------------------------
    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        """OpenAI chat completions (stream or not)."""
        return await self._generate("chat", request)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        """OpenAI completions (stream or not)."""
        return await self._generate("completion", request)

    async def _generate(self, kind: str, request: Request) -> Response:
        request_id = _request_id(request)
        started = time.monotonic()
        deadline = started + self._cfg.http.request_timeout_s
        headers: dict[str, str] = {}  # Serve's proxy adds x-request-id (the one we read) to every answer
        try:
            tenant = self._gate.admit(request.headers.get("authorization"))
            body = await _read_body(request)
            res = await self._resolve(tenant, body, request_id)
        except GateError as e:
            self._metrics.requests.inc(tags={"composition": "none", "status": str(e.status)})
            return _error(str(e), e.status, e.err_type, {**e.headers, **headers})
        body.pop("federation", None)
        body["request_id"] = request_id
        stack = res.stack
        label = self._metrics.label(stack.composite_id if stack else None)
        lora_name = "" if stack is None else f"{self._cfg.model.served_name}:{stack.text}"
        if stack is not None:
            headers["x-rmn-composite"] = stack.composite_id
        client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if body.get("stream"):  # ask for usage (token metrics); hidden again unless the client asked
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        who = tenant.id if tenant else "anonymous"
        cost = _cost(body, self._cfg.admission.default_max_tokens)
        lease: Lease | None = None
        if self._scheduler is not None:
            self._refresh_slots()
            admitted = await self._admit(who, cost, deadline, label, started, headers)
            if isinstance(admitted, Response):
                return admitted
            lease = admitted
        for attempt in (0, 1):
            try:
                response = await self._dispatch(
                    kind,
                    body,
                    lora_name,
                    stack,
                    label,
                    started,
                    deadline,
                    headers,
                    request_id,
                    client_usage,
                    lease,
                )
                break
            except _EnginesFull as full:
                self._release(lease)
                lease = None
                if self._scheduler is None or attempt:
                    return self._engine_failed(full.error, None, label, started, headers, request_id)
                # fewer engine slots than we thought (a replica lost or starting): shrink, queue again
                self._scheduler.set_slots(max(1, self._scheduler.inflight))
                self._slots_checked = 0.0
                self._metrics.retries.inc(tags={"reason": "engines_full"})
                admitted = await self._admit(who, cost, deadline, label, started, headers)
                if isinstance(admitted, Response):
                    return admitted
                lease = admitted
            except BaseException:
                self._release(lease)
                raise
        if not isinstance(response, StreamingResponse):
            self._release(lease)
        return response

    async def _admit(
        self, who: str, cost: float, deadline: float, label: str, started: float, headers: dict[str, str]
    ) -> Lease | Response:
        """A lease from the fair scheduler, or the answer when there is none: 503 + Retry-After (shed),
        504 (the deadline passed while queued)."""
        scheduler = self._scheduler
        if scheduler is None:
            raise RuntimeError("admission control is off")
        try:
            left = deadline - time.monotonic()
            lease = await asyncio.wait_for(scheduler.acquire(who, cost, left), timeout=left)
        except Shed as e:
            self._metrics.sheds.inc(tags={"reason": e.reason})
            err = _error(str(e), 503, "service_unavailable", {**headers, "retry-after": str(e.retry_after_s)})
            return self._finish(label, 503, started, err)
        except TimeoutError:
            return self._deadline_exceeded(None, label, started, headers)
        self._metrics.queue_wait.observe(lease.waited_s)
        return lease

    def _release(self, lease: Lease | None) -> None:
        if lease is not None and self._scheduler is not None:
            self._scheduler.release(lease)

    async def _dispatch(
        self,
        kind: str,
        body: dict[str, Any],
        lora_name: str,
        stack: Any,
        label: str,
        started: float,
        deadline: float,
        headers: dict[str, str],
        request_id: str,
        client_usage: bool,
        lease: Lease | None,
    ) -> Response:
        """Call the engine; retry once on another replica when the first one was lost before anything
        reached the client (see the module text)."""
        handle = self._engine.options(stream=True, multiplexed_model_id=lora_name)
        for attempt in (0, 1):
            gen: Any = None
            first: Any = None
            try:
                if attempt:
                    body = {**body, "request_id": f"{request_id}-retry"}
                gen = handle.generate.remote(kind, body)  # may raise BackPressureError at once
                head: Head = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
                if head.stream:  # the first chunk too: until it exists the client has seen nothing
                    with contextlib.suppress(StopAsyncIteration):
                        first = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
                else:
                    first = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
            except TimeoutError:
                return self._deadline_exceeded(gen, label, started, headers)
            except Exception as e:
                if _is_backpressure(e) and lease is not None:
                    _cancel(gen)
                    raise _EnginesFull(e) from e
                if _replica_lost(e) and attempt == 0:
                    _cancel(gen)
                    self._metrics.retries.inc(tags={"reason": "replica_lost"})
                    log.warning("engine replica lost; retrying once", extra={"request_id": request_id})
                    continue
                return self._engine_failed(e, gen, label, started, headers, request_id)
            break
        headers["x-rmn-replica"] = str(head.replica)
        headers["x-rmn-model"] = head.lora_name or self._cfg.model.served_name
        log.info(
            "generate",
            extra={
                "request_id": request_id,
                "kind": kind,
                "model": headers["x-rmn-model"],
                "replica": headers["x-rmn-replica"],
                "status": head.status,
            },
        )
        if head.status == 200 and stack is not None:
            for part in stack.parts:
                self._metrics.components.inc(tags={"component": part.id})
            self._usage.count([(p.id, str(p.version)) for p in stack.parts])
        if head.status == 503:  # the engine could not fetch the adapter from its store: a transient state
            headers["retry-after"] = "5"
        if not head.stream:
            item: Body = first
            self._count_tokens(label, item.body.get("usage"))
            self._metrics.ttft.observe(time.monotonic() - started, tags={"composition": label})
            return self._finish(
                label, head.status, started, JSONResponse(item.body, status_code=head.status, headers=headers)
            )
        return StreamingResponse(
            self._sse(gen, first, deadline, started, label, client_usage, request_id, lease),
            media_type="text/event-stream",
            headers=headers,
        )

    def _engine_failed(
        self, e: Exception, gen: Any, label: str, started: float, headers: dict[str, str], request_id: str
    ) -> Response:
        """The answer when the engine call raised: 503 + Retry-After when the queue is full, else an
        OpenAI-shaped 500 (never Serve's plain-text one)."""
        _cancel(gen)
        if _is_backpressure(e):
            err = _error(
                "server overloaded, retry later", 503, "service_unavailable", {**headers, "retry-after": "1"}
            )
            return self._finish(label, 503, started, err)
        if _replica_lost(e):
            log.error("engine replica lost twice", extra={"request_id": request_id, "error": repr(e)})
            message = f"the engine replica serving this request was lost; retry (request id {request_id})"
            err = _error(message, 503, "service_unavailable", {**headers, "retry-after": "2"})
            return self._finish(label, 503, started, err)
        log.error("engine call failed", extra={"request_id": request_id, "error": repr(e)})
        message = f"the engine failed to answer: {type(e).__name__} (request id {request_id})"
        return self._finish(label, 500, started, _error(message, 500, "server_error", headers))

    def _deadline_exceeded(self, gen: Any, label: str, started: float, headers: dict[str, str]) -> Response:
        _cancel(gen)
        message = f"request exceeded {self._cfg.http.request_timeout_s}s"
        return self._finish(label, 504, started, _error(message, 504, "timeout", headers))

    def _finish(self, label: str, status: int, started: float, response: Response) -> Response:
        self._metrics.requests.inc(tags={"composition": label, "status": str(status)})
        self._metrics.latency.observe(time.monotonic() - started, tags={"composition": label})
        return response

    def _count_tokens(self, label: str, usage: dict[str, Any] | None) -> None:
        if usage:
            self._metrics.tokens.inc(
                usage.get("prompt_tokens", 0), tags={"composition": label, "direction": "in"}
            )
            self._metrics.tokens.inc(
                usage.get("completion_tokens", 0), tags={"composition": label, "direction": "out"}
            )

    async def _sse(
        self,
        gen: Any,
        first_chunk: str | None,
        deadline: float,
        started: float,
        label: str,
        client_usage: bool,
        request_id: str,
        lease: Lease | None = None,
    ) -> AsyncIterator[str]:
        """Relay SSE chunks (``first_chunk`` already read; recording TTFT and usage); past the deadline or
        when the engine fails mid-stream, end with an OpenAI-shaped error event and ``[DONE]``."""
        status, first = 200, True
        pending = first_chunk
        try:
            while True:
                try:
                    if pending is not None:
                        chunk, pending = pending, None
                    else:
                        chunk = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    status = 504
                    err = error_body(f"request exceeded {self._cfg.http.request_timeout_s}s", 504, "timeout")
                    yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n"
                    return
                except Exception as e:
                    status = 500
                    log.error("engine failed mid-stream", extra={"request_id": request_id, "error": repr(e)})
                    message = f"the engine failed mid-stream: {type(e).__name__} (request id {request_id})"
                    yield f"data: {json.dumps(error_body(message, 500, 'server_error'))}\n\ndata: [DONE]\n\n"
                    return
                if first:
                    self._metrics.ttft.observe(time.monotonic() - started, tags={"composition": label})
                    first = False
                if '"choices":[]' in chunk and '"usage"' in chunk:  # the final usage-only chunk
                    with contextlib.suppress(ValueError, KeyError):
                        self._count_tokens(label, json.loads(chunk.removeprefix("data: "))["usage"])
                    if not client_usage:
                        continue
                yield chunk
        finally:
            _cancel(gen)
            self._release(lease)
            self._finish(label, status, started, Response())
