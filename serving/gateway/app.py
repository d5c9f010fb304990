"""The gateway app: FastAPI with every surface's routes and the one error handler.

Contract: :func:`make_api` builds the FastAPI app; a :class:`serving.gateway.state.Gateway` set as
``app.state.gateway`` is what its routes work with — in a router replica
:class:`serving.gateway.ingress.Router` sets it from the deployment handles it is bound to; the gateway test tier sets one built on fake handles (no Ray). Any
exception a route raises is answered by :func:`serving.errors.error_response` (OpenAI's error shape).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from serving.errors import ANSWERS, error_response


async def _answer_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def make_api() -> FastAPI:
    """The gateway's FastAPI app (routes of every surface, errors answered by the error model)."""
    from serving.admission import Shed
    from serving.gateway import adapter_routes, data_routes, openai_routes

    api = FastAPI(title="rmn-lora", version="0.1.0")
    for router in (openai_routes.router, adapter_routes.router, data_routes.router):
        api.include_router(router)
    for cls in (*ANSWERS, Shed, Exception):
        api.add_exception_handler(cls, _answer_error)
    return api


api = make_api()
