"""Small pieces every route uses: the request id, the JSON body, the gateway's state from the request."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from federation.errors import InvalidRequest, first_error

if TYPE_CHECKING:
    from serving.gateway.state import Gateway

M = TypeVar("M", bound=BaseModel)


def request_id(request: Request) -> str:
    """The request's id: the client's ``x-request-id``, else the one Serve's proxy generated (and puts in the
    request's headers and on the answer), else a new one (outside Serve)."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def gateway(request: Request) -> Gateway:
    """The gateway state this request is served with: the app's ``state.gateway`` (set by whoever built the
    app, e.g. the gateway test tier), else the Serve replica's :class:`serving.gateway.ingress.Router`
    (Serve runs a copy of the app in each replica)."""
    gw: Gateway | None = getattr(request.app.state, "gateway", None)
    if gw is None:
        from ray import serve

        router: Any = serve.get_replica_context().servable_object
        gw = router.gateway
    return gw


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; InvalidRequest when it is not one."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise InvalidRequest("request body is nested too deeply") from e
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


async def read_model(request: Request, model: type[M]) -> M:
    """The request's JSON body validated as ``model``; InvalidRequest naming the first problem."""
    body = await read_body(request)
    try:
        return model.model_validate(body)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise InvalidRequest(f"invalid request: {loc}: {msg}") from e
