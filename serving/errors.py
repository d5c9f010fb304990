"""The one error model: every exception class of the packages maps to one answer a client sees.

Domain code (``adapters``, ``cleanroom``, ``federation``, ``planning``, the deployments) raises its own
exceptions and carries no HTTP status; this module alone decides the status, OpenAI's error ``type`` and the
headers (``Retry-After``, ``WWW-Authenticate``). :data:`ANSWERS` is the table, most specific class first
wins (an exception takes the entry of the nearest class in its MRO); :func:`answer_for` reads it,
:func:`error_response` (the gateway's FastAPI handler) and :func:`error_reply` (deployments answering
each other) build the OpenAI-shaped body from it. ``tests/unit/test_errors.py`` walks every exception class
in the packages and fails on one without an entry of its own or of a class of ours above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from adapters.errors import (
    AdapterError,
    AdapterExists,
    AdapterNotFound,
    AdapterRetired,
    InvalidAdapter,
    RegistryUnavailable,
)
from cleanroom.dp import BudgetExhausted
from cleanroom.errors import AccessDenied, CleanRoomError, DataChanged, PolicyViolation, QueryFailed
from federation.errors import (
    FederationError,
    InvalidRequest,
    NoLongerServed,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from federation.tenants import AuthError
from planning.planner import PlanningError
from planning.workflow import ComparisonError, InvalidComparison
from serving.admission import Shed
from serving.config_base import ConfigError
from serving.experiments import ExperimentExists, ExperimentStopped
from serving.replies import Body, EngineItem, Head, Reply, error_body
from serving.reviews import AlreadyDecided


@dataclass(frozen=True)
class Answer:
    """What a client sees for an exception class: status, OpenAI error type, fixed headers, and a prefix
    for the message (the exception's text follows it)."""

    status: int
    err_type: str
    headers: dict[str, str] = field(default_factory=dict)
    prefix: str = ""


class Relayed(Exception):
    """Another deployment's error answer, already mapped there, passed on as it is (status and type)."""

    def __init__(self, message: str, status: int, err_type: str) -> None:
        super().__init__(message)
        self.status, self.err_type = status, err_type

    def __reduce__(self) -> tuple[type[Relayed], tuple[str, int, str]]:
        return (type(self), (str(self), self.status, self.err_type))

    @classmethod
    def of(cls, reply: Reply) -> Relayed:
        """The error of an error :class:`Reply`."""
        err = reply.body.get("error") if isinstance(reply.body, dict) else None
        err_type = str(err.get("type", "server_error")) if isinstance(err, dict) else "server_error"
        return cls(reply.message, reply.status, err_type)


class LengthRequired(InvalidRequest):
    """An upload without a Content-Length header."""


class PayloadTooLarge(InvalidRequest):
    """An upload over the configured size limit."""


class Overloaded(Exception):
    """Refused for lack of capacity (queue full, engines full); ``retry_after_s`` says when to ask again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type[Overloaded], tuple[str, int]]:
        return (type(self), (str(self), self.retry_after_s))


class ReplicaLost(Overloaded):
    """The engine replica serving the request died or drained, and the one retry failed too."""


class DeadlineExceeded(Exception):
    """The request ran past ``http.request_timeout_s``."""


class EngineFailed(Exception):
    """The engine call failed for another reason (a bug or a crash, not a verdict on the request)."""


class NotConfigured(NotFound):
    """The route's feature (clean room, planning) is not configured on this deployment."""


_RETRY_5 = {"retry-after": "5"}

ANSWERS: dict[type[BaseException], Answer] = {
    # adapters: registry and validation
    AdapterError: Answer(500, "server_error"),
    InvalidAdapter: Answer(400, "invalid_request_error"),
    AdapterExists: Answer(409, "invalid_request_error"),
    AdapterNotFound: Answer(404, "not_found_error"),
    AdapterRetired: Answer(410, "not_found_error"),
    RegistryUnavailable: Answer(503, "service_unavailable", _RETRY_5, "adapter registry unavailable: "),
    # clean room
    CleanRoomError: Answer(500, "server_error"),
    PolicyViolation: Answer(400, "policy_violation"),
    AccessDenied: Answer(403, "permission_error"),
    BudgetExhausted: Answer(403, "privacy_budget_exhausted"),
    QueryFailed: Answer(500, "server_error"),
    DataChanged: Answer(503, "data_unavailable"),
    # federation: who may ask what
    FederationError: Answer(400, "invalid_request_error"),
    InvalidRequest: Answer(400, "invalid_request_error"),
    AuthError: Answer(401, "authentication_error", {"www-authenticate": "Bearer"}),
    PermissionDenied: Answer(403, "permission_error"),
    NotFound: Answer(404, "not_found_error"),
    NoLongerServed: Answer(410, "not_found_error"),
    RateLimited: Answer(429, "rate_limit_error"),
    AlreadyDecided: Answer(409, "invalid_request_error"),
    ExperimentExists: Answer(409, "invalid_request_error"),
    ExperimentStopped: Answer(410, "not_found_error"),
    # planning
    PlanningError: Answer(400, "planning_error"),
    ComparisonError: Answer(400, "planning_error"),
    InvalidComparison: Answer(400, "invalid_request_error"),
    # the gateway and the deployments
    LengthRequired: Answer(411, "invalid_request_error"),
    PayloadTooLarge: Answer(413, "invalid_request_error"),
    Overloaded: Answer(503, "service_unavailable"),
    DeadlineExceeded: Answer(504, "timeout"),
    EngineFailed: Answer(500, "server_error"),
    Shed: Answer(503, "service_unavailable"),
    Relayed: Answer(500, "server_error"),  # answer_for gives a relayed error its own status and type
    ConfigError: Answer(500, "server_error"),  # a config that fails at request time is the operator's to fix
}
_UNMAPPED = Answer(500, "server_error")


def answer_for(exc: BaseException) -> Answer:
    """The answer of the nearest class of ``exc`` in :data:`ANSWERS` (500 server_error when none is ours),
    with ``retry_after_s`` as Retry-After. A relayed answer keeps its status and type; a comparison that a
    side's source refused answers as that refusal."""
    if isinstance(exc, Relayed):
        return Answer(exc.status, exc.err_type)
    if isinstance(exc, ComparisonError) and exc.cause is not None:
        return answer_for(exc.cause)
    found = next((ANSWERS[c] for c in type(exc).__mro__ if c in ANSWERS), _UNMAPPED)
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        return Answer(
            found.status, found.err_type, {**found.headers, "retry-after": str(retry)}, found.prefix
        )
    return found


def status_of(exc: BaseException) -> int:
    """The HTTP status ``exc`` answers with (audit records keep it)."""
    return answer_for(exc).status


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    """The gateway's answer to ``exc``: OpenAI's error shape, the table's status and headers (+ ``headers``)."""
    a = answer_for(exc)
    body = error_body(f"{a.prefix}{exc}", a.status, a.err_type)
    return JSONResponse(body, status_code=a.status, headers={**a.headers, **(headers or {})})


def error_reply(exc: BaseException, param: str | None = None, context: str = "") -> Reply:
    """A deployment's answer to ``exc`` (relayed by the gateway as it is); ``context`` opens the message."""
    a = answer_for(exc)
    return Reply.error(a.status, f"{context}{a.prefix}{exc}", a.err_type, param, dict(a.headers))


def error_items(exc: BaseException, param: str | None = None, context: str = "") -> list[EngineItem]:
    """An engine's answer to ``exc``: a non-streaming :class:`Head` and the error :class:`Body`."""
    a = answer_for(exc)
    return [Head(a.status, False), Body(error_body(f"{context}{a.prefix}{exc}", a.status, a.err_type, param))]


def error_fields(exc: BaseException) -> dict[str, Any]:
    """Status and reason of a refusal, for audit records."""
    return {"status": status_of(exc), "reason": str(exc)}
