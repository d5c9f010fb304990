"""The OpenAI-compatible ingress (federation router): authenticate, pick the stack, route, stream.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``POST /v1/federation/resolve``, ``GET /healthz`` (liveness), ``GET /readyz`` (an engine replica answers).
Every answer carries ``x-request-id``; generations also ``x-rmn-model`` (the version-pinned stack that
served it), ``x-rmn-composite`` (its content-addressed id) and ``x-rmn-replica``. Errors use OpenAI's
shape: 400 malformed, 401 no/invalid key, 403 forbidden component, 404 unknown model, 429 rate limit,
503 overloaded (both with Retry-After), 504 past the deadline. The router never reads adapter weights:
engine replicas compose and load them on their own node.
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
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from adapters import AdapterRegistry
from federation.access import Gate
from federation.errors import GateError
from federation.graph import composition_graph
from federation.tenants import Role, Tenant
from serving.config import AppConfig
from serving.metrics import RouterMetrics
from serving.replies import Body, Head, Reply, error_body
from serving.writer import Completion, write_texts

log = logging.getLogger("ray.serve")
api = FastAPI(title="rmn-lora", version="0.1.0")


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
        self._registry = AdapterRegistry(config.adapters.root, max_rank=config.engine.max_lora_rank)
        self._gate = Gate(
            config.federation,
            self._registry,
            config.model.served_name,
            config.engine.max_lora_rank,
            config.adapters.compress_overflow,
        )
        self._metrics = RouterMetrics(config.federation.metrics_top_n if config.federation else 20)

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
        for m in self._registry.list():
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
            res = self._gate.resolve(tenant, body, request_id)
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

    async def complete(self, tenant: Tenant | None, body: dict[str, Any], request_id: str) -> Completion:
        """One non-streamed chat completion through the federation (for text the router writes itself);
        raises :class:`GateError` when the stack is refused."""
        res = self._gate.resolve(tenant, body, request_id)
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
            res = self._gate.resolve(tenant, body, request_id)
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
        handle = self._engine.options(stream=True, multiplexed_model_id=lora_name)
        gen: Any = None
        try:
            gen = handle.generate.remote(kind, body)  # may raise BackPressureError at once
            head: Head = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
        except TimeoutError:
            return self._deadline_exceeded(gen, label, started, headers)
        except Exception as e:
            return self._engine_failed(e, gen, label, started, headers, request_id)
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
        if not head.stream:
            try:
                item: Body = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
            except TimeoutError:
                return self._deadline_exceeded(gen, label, started, headers)
            except Exception as e:
                return self._engine_failed(e, gen, label, started, headers, request_id)
            self._count_tokens(label, item.body.get("usage"))
            self._metrics.ttft.observe(time.monotonic() - started, tags={"composition": label})
            return self._finish(
                label, head.status, started, JSONResponse(item.body, status_code=head.status, headers=headers)
            )
        return StreamingResponse(
            self._sse(gen, deadline, started, label, client_usage, request_id),
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
        self, gen: Any, deadline: float, started: float, label: str, client_usage: bool, request_id: str
    ) -> AsyncIterator[str]:
        """Relay SSE chunks (recording TTFT and usage); past the deadline or when the engine fails
        mid-stream, end with an OpenAI-shaped error event and ``[DONE]``."""
        status, first = 200, True
        try:
            while True:
                try:
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
            self._finish(label, status, started, Response())
