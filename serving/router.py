"""The OpenAI-compatible ingress: parse the model name, pin the adapter stack, route, stream.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /healthz``
(liveness), ``GET /readyz`` (an engine replica answers). Every answer carries ``x-request-id``;
generations also ``x-rmn-model`` (the version-pinned stack that served it), ``x-rmn-composite`` (its
content-addressed composite id) and ``x-rmn-replica``.
Errors use OpenAI's shape: 400 malformed, 404 unknown model, 503 overloaded (with Retry-After), 504 past
the request deadline. The router never reads adapter weights: engine replicas load them on their node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from adapters import AdapterNotFound, AdapterRegistry, InvalidAdapter
from adapters.cache import ResolvedStack, resolve
from serving.config import AppConfig
from serving.model_names import ModelNameError, parse_model_name
from serving.vllm_engine import error_body

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


class _Stop(Exception):
    """Raised inside the router to answer with an error response."""

    def __init__(self, response: JSONResponse) -> None:
        self.response = response


@serve.ingress(api)
class Router:
    """Ray Serve ingress deployment class (bound by :func:`serving.app.build_app`)."""

    def __init__(self, engine: DeploymentHandle, config: AppConfig) -> None:
        self._engine = engine
        self._cfg = config
        self._registry = AdapterRegistry(config.adapters.root, max_rank=config.engine.max_lora_rank)

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

    # ---- models ----------------------------------------------------------------------------
    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """The base model and every registered adapter (latest version), OpenAI ``list`` shape."""
        base = self._cfg.model.served_name
        now = int(time.time())
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
        for m in self._registry.list():
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
        return {"object": "list", "data": data}

    # ---- generation ------------------------------------------------------------------------
    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        """OpenAI chat completions (stream or not) for ``base`` or ``base:adapter[@version]``."""
        return await self._generate("chat", request)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        """OpenAI completions (stream or not)."""
        return await self._generate("completion", request)

    async def _read_body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _Stop(_error(f"request body is not valid JSON: {e}", 400)) from e
        if not isinstance(body, dict):
            raise _Stop(_error("request body must be a JSON object", 400))
        return body

    def _resolve(self, model: object) -> ResolvedStack | None:
        """The version-pinned stack a model name asks for; None for the base model."""
        try:
            ref = parse_model_name(model, self._cfg.model.served_name)
            if ref.is_base:
                return None
            stack = resolve(self._registry, ref.parts)
        except ModelNameError as e:
            err_type = "not_found_error" if e.status == 404 else "invalid_request_error"
            raise _Stop(_error(str(e), e.status, err_type)) from e
        except AdapterNotFound as e:
            raise _Stop(_error(f"model {model!r} does not exist: {e}", 404, "not_found_error")) from e
        except InvalidAdapter as e:
            raise _Stop(_error(str(e), 400)) from e
        limit = self._cfg.engine.max_lora_rank
        if stack.rank > limit and not self._cfg.adapters.compress_overflow:
            raise _Stop(
                _error(
                    f"stack {stack.text} has total rank {stack.rank}, above max_lora_rank {limit} "
                    "(use fewer or smaller adapters, or enable adapters.compress_overflow)",
                    400,
                )
            )
        return stack

    async def _generate(self, kind: str, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        started = time.monotonic()
        deadline = started + self._cfg.http.request_timeout_s
        try:
            body = await self._read_body(request)
            stack = self._resolve(body.get("model"))
        except _Stop as stop:
            stop.response.headers["x-request-id"] = request_id
            return stop.response
        body["request_id"] = request_id
        lora_name = "" if stack is None else f"{self._cfg.model.served_name}:{stack.text}"
        handle = self._engine.options(stream=True, multiplexed_model_id=lora_name)
        headers = {"x-request-id": request_id}
        if stack is not None:
            headers["x-rmn-composite"] = stack.composite_id
        gen: Any = None
        try:
            gen = handle.generate.remote(kind, body)  # may raise BackPressureError at once
            meta = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
        except TimeoutError:
            _cancel(gen)
            return _error(f"request exceeded {self._cfg.http.request_timeout_s}s", 504, "timeout", headers)
        except Exception as e:
            if not _is_backpressure(e):
                raise
            return _error(
                "server overloaded, retry later", 503, "service_unavailable", {**headers, "retry-after": "1"}
            )
        headers["x-rmn-replica"] = str(meta.get("replica"))
        headers["x-rmn-model"] = meta.get("lora_name") or self._cfg.model.served_name
        log.info(
            "generate",
            extra={
                "request_id": request_id,
                "kind": kind,
                "model": headers["x-rmn-model"],
                "replica": headers["x-rmn-replica"],
                "status": meta["status"],
            },
        )
        if not meta.get("stream"):
            try:
                item = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
            except TimeoutError:
                _cancel(gen)
                return _error(
                    f"request exceeded {self._cfg.http.request_timeout_s}s", 504, "timeout", headers
                )
            return JSONResponse(item["body"], status_code=meta["status"], headers=headers)
        return StreamingResponse(self._sse(gen, deadline), media_type="text/event-stream", headers=headers)

    async def _sse(self, gen: Any, deadline: float) -> AsyncIterator[str]:
        """Relay SSE chunks; past the deadline, end the stream with an error event."""
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(gen.__anext__(), timeout=deadline - time.monotonic())
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    err = error_body(f"request exceeded {self._cfg.http.request_timeout_s}s", 504, "timeout")
                    yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n"
                    return
                yield chunk
        finally:
            _cancel(gen)
