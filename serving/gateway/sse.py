"""The SSE relay: engine chunks to the client, with TTFT and token metrics; past the deadline or when the
engine fails mid-stream, an OpenAI-shaped error event and ``[DONE]`` end the stream (the status line was sent
long ago). The admission lease is given back when the stream ends, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from serving.admission import Lease
from serving.errors import DeadlineExceeded, EngineFailed, answer_for
from serving.gateway.generation import Generation
from serving.gateway.ray_errors import cancel
from serving.replies import error_body

if TYPE_CHECKING:
    from serving.gateway.state import Gateway

log = logging.getLogger("ray.serve")


def error_event(exc: BaseException) -> str:
    """An error as the last SSE event: OpenAI's error shape, then ``[DONE]``."""
    a = answer_for(exc)
    return f"data: {json.dumps(error_body(str(exc), a.status, a.err_type))}\n\ndata: [DONE]\n\n"


async def relay(
    gw: Gateway, g: Generation, gen: Any, first_chunk: str | None, lease: Lease | None
) -> AsyncIterator[str]:
    """Relay ``gen``'s SSE chunks (``first_chunk`` already read), hiding the usage-only chunk unless the
    client asked for it."""
    status, first = 200, True
    pending = first_chunk
    try:
        while True:
            try:
                if pending is not None:
                    chunk, pending = pending, None
                else:
                    chunk = await asyncio.wait_for(gen.__anext__(), timeout=g.left())
            except StopAsyncIteration:
                return
            except TimeoutError:
                if lease is not None and gw.scheduler is not None:
                    gw.scheduler.record_miss(lease)
                err: Exception = DeadlineExceeded(f"request exceeded {gw.cfg.http.request_timeout_s}s")
                status = answer_for(err).status
                yield error_event(err)
                return
            except Exception as e:
                log.error("engine failed mid-stream", extra={"request_id": g.request_id, "error": repr(e)})
                err = EngineFailed(
                    f"the engine failed mid-stream: {type(e).__name__} (request id {g.request_id})"
                )
                status = answer_for(err).status
                yield error_event(err)
                return
            if first:
                gw.metrics.ttft.observe(time.monotonic() - g.started, tags={"composition": g.label})
                first = False
            if '"choices":[]' in chunk and '"usage"' in chunk:  # the final usage-only chunk
                with contextlib.suppress(ValueError, KeyError):
                    gw.count_tokens(g.label, json.loads(chunk.removeprefix("data: "))["usage"])
                if not g.client_usage:
                    continue
            yield chunk
    finally:
        cancel(gen)
        if lease is not None and gw.scheduler is not None:
            gw.scheduler.release(lease)
        gw.record(g.label, status, g.started)
