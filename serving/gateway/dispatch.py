"""The generation path: authenticate, resolve the stack, take an admission lease, call the engine (one retry on
another replica), relay the answer; every refusal is an exception the error model answers.

Contract of :func:`generate`: a request whose engine replica dies or drains before anything reached the client
(non-streaming: before the answer; streaming: before the first chunk) is retried once on another replica, and
answered 503 + Retry-After (:class:`ReplicaLost`) if that fails too; a full Serve queue shrinks the
scheduler's slots and queues the request again once; past the deadline: 504. Every answer is counted in the
router's metrics (requests by composition and status, latency, TTFT, tokens).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from adapters.cache import ResolvedStack
from federation.graph import composition_graph
from federation.tenants import Tenant
from serving.admission import Lease, Shed
from serving.errors import DeadlineExceeded, EngineFailed, Overloaded, ReplicaLost, error_response, status_of
from serving.gateway.experiment_routes import join_experiment
from serving.gateway.generation import Generation, cost_of
from serving.gateway.http import read_body, request_id
from serving.gateway.ray_errors import cancel, is_backpressure, replica_lost
from serving.gateway.sse import relay
from serving.gateway.state import Gateway
from serving.gateway.timing import server_timing
from serving.replies import Body, Head
from serving.writer import Completion

log = logging.getLogger("ray.serve")
T = TypeVar("T")


class EnginesFull(Overloaded):
    """Serve refused a dispatched request (its queue is full): the engines have fewer slots than the
    scheduler thought. Nothing reached the client."""


async def generate(gw: Gateway, kind: str, request: Request) -> Response:
    """Serve one OpenAI chat or completion request (see the module contract)."""
    rid = request_id(request)
    started = time.monotonic()
    try:
        tenant = await gw.admit(request)
        body = await read_body(request)
        joined = await join_experiment(gw, tenant, body, rid)  # model experiment:<id>: the unit's arm
        res = await gw.resolve(tenant, body, rid)
    except Exception as e:  # refused before any engine: counted, then answered by the error model
        gw.metrics.requests.inc(tags={"composition": "none", "status": str(status_of(e))})
        raise
    explain = isinstance(body.get("federation"), dict) and body["federation"].get("explain") is True
    g = _generation(gw, kind, body, rid, tenant, res.stack, started)
    g.headers.update(joined)
    if res.stack is not None:  # the composition that answered, compactly: layer=id@version*weight, in order
        layers = res.decision.layers or tuple(m.kind for m in res.stack.manifests)
        g.headers["x-rmn-composition"] = ",".join(
            f"{layer}={p.id}@{p.version}*{p.weight:g}"
            for layer, p in zip(layers, res.stack.parts, strict=True)
        )
    if explain:
        g.graph = composition_graph(gw.cfg.model.served_name, res, tenant)
    if res.decision.task is not None:  # which task adapter the stack took, and how sure the classifier was
        g.headers["x-rmn-task"] = res.decision.task
        if res.decision.task_confidence is not None and res.decision.task_source == "classifier":
            g.headers["x-rmn-task-confidence"] = f"{res.decision.task_confidence:.3f}"
    try:
        return await _admitted(gw, g)
    except (Overloaded, DeadlineExceeded, EngineFailed) as e:
        return finish(gw, g, status_of(e), error_response(e, g.headers))


def _generation(
    gw: Gateway,
    kind: str,
    body: dict[str, Any],
    rid: str,
    tenant: Tenant | None,
    stack: ResolvedStack | None,
    started: float,
) -> Generation:
    body.pop("federation", None)
    body["request_id"] = rid
    client_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    if body.get("stream"):  # ask for usage (token metrics); hidden again unless the client asked
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    g = Generation(
        kind=kind,
        body=body,
        request_id=rid,
        who=tenant.id if tenant else "anonymous",
        stack=stack,
        lora_name="" if stack is None else f"{gw.cfg.model.served_name}:{stack.text}",
        label=gw.metrics.label(stack.composite_id if stack else None),
        started=started,
        deadline=started + gw.cfg.http.request_timeout_s,
        cost=cost_of(body, gw.cfg.admission.default_max_tokens),
        client_usage=client_usage,
    )
    if stack is not None:
        g.headers["x-rmn-composite"] = stack.composite_id
    return g


async def _admitted(gw: Gateway, g: Generation) -> Response:
    """Dispatch under an admission lease; a full engine queue shrinks the slots and queues once more."""
    if gw.scheduler is not None:
        gw.refresh_slots()
        g.lease = await admit(gw, g)
    for attempt in (0, 1):
        try:
            response = await dispatch(gw, g)
            break
        except EnginesFull as full:
            release(gw, g)
            if gw.scheduler is None or attempt:
                raise engine_failure(full.__cause__ or full, g.request_id) from full
            # fewer engine slots than we thought (a replica lost or starting): shrink, queue again
            gw.scheduler.set_slots(max(1, gw.scheduler.inflight))
            gw.slots_checked = 0.0
            gw.metrics.retries.inc(tags={"reason": "engines_full"})
            g.lease = await admit(gw, g)
        except BaseException:
            release(gw, g)
            raise
    if not isinstance(response, StreamingResponse):
        release(gw, g)
    return response


async def admit(gw: Gateway, g: Generation) -> Lease:
    """A lease from the fair scheduler; Overloaded (shed: 503 + Retry-After) or DeadlineExceeded (the deadline
    passed while queued)."""
    if gw.scheduler is None:
        raise RuntimeError("admission control is off")
    try:
        lease = await asyncio.wait_for(gw.scheduler.acquire(g.who, g.cost, g.left()), timeout=g.left())
    except Shed as e:
        gw.metrics.sheds.inc(tags={"reason": e.reason})
        raise Overloaded(str(e), e.retry_after_s) from e
    except TimeoutError as e:
        gw.scheduler.record_miss()  # queued past its deadline: the estimate let it in
        raise DeadlineExceeded(f"request exceeded {gw.cfg.http.request_timeout_s}s") from e
    gw.metrics.queue_wait.observe(lease.waited_s)
    return lease


def release(gw: Gateway, g: Generation) -> None:
    """Give the generation's lease back (once)."""
    if g.lease is not None and gw.scheduler is not None:
        gw.scheduler.release(g.lease)
    g.lease = None


async def dispatch(gw: Gateway, g: Generation) -> Response:
    """Call the engine; retry once on another replica when the first one was lost before anything reached
    the client."""
    handle = gw.engine_for(g.lora_name)
    for attempt in (0, 1):
        gen: Any = None
        first: Any = None
        body = g.body if not attempt else {**g.body, "request_id": f"{g.request_id}-retry"}
        called = time.monotonic()
        try:
            gen = handle.generate.remote(g.kind, body)  # may raise BackPressureError at once
            head: Head = await asyncio.wait_for(gen.__anext__(), timeout=g.left())
            try:  # streaming: the first chunk too (until it exists the client has seen nothing)
                first = await asyncio.wait_for(gen.__anext__(), timeout=g.left())
            except StopAsyncIteration:
                if not head.stream:
                    raise
        except TimeoutError as e:
            cancel(gen)
            if g.lease is not None and gw.scheduler is not None:
                gw.scheduler.record_miss(g.lease)  # admitted, yet late: admission keeps a wider margin
            raise DeadlineExceeded(f"request exceeded {gw.cfg.http.request_timeout_s}s") from e
        except Exception as e:
            cancel(gen)
            if is_backpressure(e) and g.lease is not None:
                raise EnginesFull(str(e), 1) from e
            if replica_lost(e) and attempt == 0:
                gw.metrics.retries.inc(tags={"reason": "replica_lost"})
                log.warning("engine replica lost; retrying once", extra={"request_id": g.request_id})
                if g.lease is not None:  # the lost attempt is no measure of the engines' service rate
                    g.lease.excluded_s += time.monotonic() - called
                continue
            raise engine_failure(e, g.request_id) from e
        break
    return _answer(gw, g, head, gen, first, time.monotonic() - called)


async def call_deployment(gw: Gateway, call: Callable[[], Awaitable[T]], what: str, rid: str) -> T:
    """Await ``call()`` on a deployment handle; when its replica was lost (died, unreachable, draining) call
    once more, which Serve routes to a live replica. Lost twice or queue full: 503 with Retry-After; any other
    failure propagates. Only for calls that are safe to run twice (the clean room answers a repeated release
    from its stored answers, and a ledger charged by a lost call stays charged: never less private)."""
    for attempt in (0, 1):
        try:
            return await call()
        except Exception as e:
            if replica_lost(e) and attempt == 0:
                gw.metrics.retries.inc(tags={"reason": "replica_lost"})
                log.warning(f"{what} replica lost; retrying once", extra={"request_id": rid})
                continue
            if is_backpressure(e):
                raise Overloaded(f"the {what} is overloaded, retry later", 1) from e
            if replica_lost(e):
                raise ReplicaLost(f"the {what} replica was lost twice; retry (request id {rid})", 2) from e
            raise
    raise AssertionError("unreachable")


def engine_failure(e: BaseException, rid: str) -> Exception:
    """What a failed engine call means for the client: overloaded (503, retry soon), the replica lost twice
    (503), or a failure of the engine itself (500; logged)."""
    if is_backpressure(e):
        return Overloaded("server overloaded, retry later", 1)
    if replica_lost(e):
        log.error("engine replica lost twice", extra={"request_id": rid, "error": repr(e)})
        return ReplicaLost(f"the engine replica serving this request was lost; retry (request id {rid})", 2)
    log.error("engine call failed", extra={"request_id": rid, "error": repr(e)})
    return EngineFailed(f"the engine failed to answer: {type(e).__name__} (request id {rid})")


def _answer(gw: Gateway, g: Generation, head: Head, gen: Any, first: Any, call_s: float) -> Response:
    g.headers["server-timing"] = server_timing(
        g.lease.waited_s if g.lease is not None else 0.0, head, call_s, time.monotonic() - g.started
    )
    if g.lease is not None:
        g.lease.excluded_s += head.load_s  # its adapter's cold load is not the engines' service rate
    g.headers["x-rmn-replica"] = str(head.replica)
    g.headers["x-rmn-model"] = head.lora_name or gw.cfg.model.served_name
    log.info(
        "generate",
        extra={
            "request_id": g.request_id,
            "kind": g.kind,
            "model": g.headers["x-rmn-model"],
            "replica": g.headers["x-rmn-replica"],
            "status": head.status,
        },
    )
    if head.status == 200 and g.stack is not None:
        for part in g.stack.parts:
            gw.metrics.components.inc(tags={"component": part.id})
        gw.usage.count([(p.id, str(p.version)) for p in g.stack.parts])
    if head.status == 503:  # the engine could not fetch the adapter from its store: a transient state
        g.headers["retry-after"] = "5"
    if not head.stream:
        item: Body = first
        gw.count_tokens(g.label, item.body.get("usage"))
        if g.graph is not None and head.status == 200:
            item.body["rmn_composition"] = g.graph  # asked for with federation.explain
        gw.metrics.ttft.observe(time.monotonic() - g.started, tags={"composition": g.label})
        return finish(gw, g, head.status, JSONResponse(item.body, status_code=head.status, headers=g.headers))
    lease, g.lease = g.lease, None  # the stream gives it back when it ends
    return StreamingResponse(
        relay(gw, g, gen, first, lease), media_type="text/event-stream", headers=g.headers
    )


def finish(gw: Gateway, g: Generation, status: int, response: Response) -> Response:
    """Count an answer (requests by composition and status, latency) and return it."""
    gw.record(g.label, status, g.started)
    return response


async def complete(gw: Gateway, tenant: Tenant | None, body: dict[str, Any], request_id: str) -> Completion:
    """One non-streamed chat completion through the federation (for text the router writes itself); the
    gate's refusal propagates."""
    res = await gw.resolve(tenant, body, request_id)
    body.pop("federation", None)
    body["request_id"] = f"{request_id}-{uuid.uuid4().hex[:8]}"
    lora_name = "" if res.stack is None else f"{gw.cfg.model.served_name}:{res.stack.text}"
    gen: Any = gw.engine_for(lora_name).generate.remote("chat", body)
    try:
        head: Head = await gen.__anext__()
        item: Body = await gen.__anext__()
    finally:
        cancel(gen)
    return Completion(head.status, item.body, head.lora_name or lora_name)
