"""The one error model (serving/errors.py): every exception class of the packages has an answer, and the
answers carry the right status, OpenAI type and headers."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

from adapters.errors import AdapterExists, RegistryUnavailable
from cleanroom.dp import BudgetExhausted
from cleanroom.errors import AccessDenied, PolicyViolation
from federation.errors import InvalidRequest, NoLongerServed, RateLimited
from federation.model_names import UnknownModel
from federation.tenants import AuthError, Forbidden
from planning.workflow import ComparisonError
from serving.admission import Shed
from serving.errors import (
    ANSWERS,
    DeadlineExceeded,
    Overloaded,
    PayloadTooLarge,
    Relayed,
    answer_for,
    error_reply,
    error_response,
)

PACKAGES = ("adapters", "cleanroom", "federation", "planning", "serving")


def exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in the packages (every module imported)."""
    found: list[type[BaseException]] = []
    for pkg in PACKAGES:
        root = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(root.__path__, f"{pkg}."):
            module = importlib.import_module(info.name)
            found += [
                obj
                for obj in vars(module).values()
                if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
            ]
    return found


def unmapped(classes: list[type[BaseException]]) -> list[str]:
    """Classes without an entry of their own or of one of our classes above them in their MRO."""
    ours = tuple(f"{p}." for p in PACKAGES)
    return [
        f"{c.__module__}.{c.__qualname__}"
        for c in classes
        if not any(k in ANSWERS and k.__module__.startswith(ours) for k in c.__mro__)
    ]


def test_every_exception_class_in_the_packages_is_mapped() -> None:
    classes = exception_classes()
    assert len(classes) >= 30
    assert unmapped(classes) == []


def test_a_new_unmapped_exception_class_is_caught() -> None:
    """The check above fails for a class that only Python's own Exception covers."""

    class TenantSuspended(Exception):
        pass

    TenantSuspended.__module__ = "federation.tenants"
    assert unmapped([TenantSuspended]) == [
        "federation.tenants.test_a_new_unmapped_exception_class_is_caught.<locals>.TenantSuspended"
    ]
    assert answer_for(TenantSuspended("x")).status == 500  # unmapped: a server error, never a crash


@pytest.mark.parametrize(
    ("e", "status", "err_type", "headers"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error", {}),
        (
            AuthError("no key"),
            401,
            "authentication_error",
            {"www-authenticate": "Bearer"},
        ),
        (Forbidden("private", "brand_x"), 403, "permission_error", {}),
        (UnknownModel("no such base"), 404, "not_found_error", {}),
        (NoLongerServed("retired"), 410, "not_found_error", {}),
        (RateLimited("slow down", 7), 429, "rate_limit_error", {"retry-after": "7"}),
        (AdapterExists("taken"), 409, "invalid_request_error", {}),
        (RegistryUnavailable("down"), 503, "service_unavailable", {"retry-after": "5"}),
        (BudgetExhausted("spent"), 403, "privacy_budget_exhausted", {}),
        (AccessDenied("not yours"), 403, "permission_error", {}),
        (PolicyViolation("k too small"), 400, "policy_violation", {}),
        (
            Shed("queue full", "queue_full", 3),
            503,
            "service_unavailable",
            {"retry-after": "3"},
        ),
        (DeadlineExceeded("late"), 504, "timeout", {}),
        (PayloadTooLarge("big"), 413, "invalid_request_error", {}),
    ],
)
def test_answers(e: BaseException, status: int, err_type: str, headers: dict[str, str]) -> None:
    a = answer_for(e)
    assert (a.status, a.err_type) == (status, err_type)
    assert {k: v for k, v in a.headers.items()} == headers
    response = error_response(e)
    assert response.status_code == status and all(response.headers[k] == v for k, v in headers.items())


def test_a_comparison_refused_by_a_side_answers_as_that_refusal() -> None:
    from planning.workflow import InvalidComparison

    assert answer_for(ComparisonError("clean room: spent", BudgetExhausted("spent"))).status == 403
    assert answer_for(ComparisonError("no cells")).status == 400
    assert answer_for(InvalidComparison("budget: must be > 0")).err_type == "invalid_request_error"
    relayed = Relayed("clean room said no", 429, "rate_limit_error")
    reply = error_reply(ComparisonError("clean room: said no", relayed))
    assert reply.status == 429 and reply.body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    "e",
    [
        RateLimited("slow", 3),
        Forbidden("private", "x"),
        Relayed("m", 403, "permission_error"),
        ComparisonError("m", Relayed("r", 429, "rate_limit_error")),
        Overloaded("full", 2),
    ],
)
def test_errors_that_cross_ray_survive_pickling(e: BaseException) -> None:
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and str(back) == str(e) and answer_for(back) == answer_for(e)
