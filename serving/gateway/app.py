"""The gateway app: FastAPI with every surface's routes and the one error handler.

Contract: :func:`make_api` builds the FastAPI app. Its routes work with a :class:`serving.gateway.state.Gateway`:
the app's ``state.gateway`` when set (the gateway test tier sets one over fake handles, no Ray), else the Serve
replica's :class:`serving.gateway.ingress.Router` (which builds it from the handles it is bound to). Any exception
a route raises is answered by :func:`serving.errors.error_response` (OpenAI's error shape; unmapped: 500).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from serving.errors import ANSWERS, error_response
from serving.gateway import adapter_routes, data_routes, experiment_routes, openai_routes


async def _answer_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def make_api() -> FastAPI:
    """The gateway's FastAPI app (routes of every surface, errors answered by the error model)."""
    api = FastAPI(title="rmn-lora", version="0.1.0")
    for router in (openai_routes.router, adapter_routes.router, data_routes.router, experiment_routes.router):
        api.include_router(router)
    for cls in (*ANSWERS, Exception):  # Shed and every other class of ours are in ANSWERS
        api.add_exception_handler(cls, _answer_error)
    return api


api = make_api()
