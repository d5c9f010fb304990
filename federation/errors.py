"""Why the federation refuses a request. Domain errors: no HTTP status here — ``serving/errors.py`` maps
each class to the answer a client sees (status, OpenAI error type, headers). Messages are safe to show
the caller."""

from __future__ import annotations

from pydantic import ValidationError


class FederationError(Exception):
    """Base class: a request the federation (or the gateway in front of it) refuses."""


class InvalidRequest(FederationError, ValueError):
    """The request is malformed: its body, a field, a parameter."""


class PermissionDenied(FederationError):
    """The caller is known but may not do this (another brand's plan, adapter or component)."""


class NotFound(FederationError):
    """No such model, adapter or job — or one the caller may not see (no existence leak)."""


class NoLongerServed(NotFound):
    """A pinned version that was retired: requests no longer resolve to it."""


class RateLimited(FederationError):
    """The tenant's request rate is over its limit; asking again after ``retry_after_s`` may succeed."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type[RateLimited], tuple[str, int]]:
        return (type(self), (str(self), self.retry_after_s))


def first_error(e: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of a validation error's first problem."""
    first = e.errors()[0]
    return ".".join(str(p) for p in first["loc"]), str(first["msg"])
