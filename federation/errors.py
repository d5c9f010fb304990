"""Errors the federation answers to a client with an HTTP status (the router relays them verbatim)."""

from __future__ import annotations

from pydantic import ValidationError


class GateError(Exception):
    """An HTTP error answer: status, OpenAI error type, message, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        err_type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.err_type, self.headers = status, err_type, headers or {}


def first_error(e: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of a validation error's first problem, for 400 answers."""
    first = e.errors()[0]
    return ".".join(str(p) for p in first["loc"]), str(first["msg"])
