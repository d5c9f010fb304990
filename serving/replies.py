"""What deployments answer each other, typed, and OpenAI's error shape.

- :class:`Reply`: a whole answer (clean-room, planner and comparison deployments): status, JSON body,
  extra headers. The router relays it as it is.
- An engine answers a generation as a stream of items: first a :class:`Head` (status, streaming or not,
  which replica and which adapter), then either one :class:`Body` (non-streaming answers and errors) or
  the SSE ``str`` chunks, ending with ``data: [DONE]``.
All are plain dataclasses: they cross Ray's object store by pickling.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


def error_body(
    message: str, status: int, err_type: str = "invalid_request_error", param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


@dataclass(frozen=True)
class Reply:
    """One whole answer of a deployment."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        err_type: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """An error answer in OpenAI's shape."""
        return cls(status, error_body(message, status, err_type, param), headers or {})

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """The error message of an error answer ('' otherwise)."""
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return str(err.get("message", "")) if isinstance(err, dict) else ""


@dataclass(frozen=True)
class Head:
    """First item of an engine's answer."""

    status: int
    stream: bool
    replica: str | None = None
    lora_name: str | None = None
    load_s: float = 0.0  # seconds the request waited for its adapter to be composed and loaded first
    engine_s: float = 0.0  # seconds from the replica's call to this head (load included)

    def at(self, replica: str, lora_name: str | None, load_s: float = 0.0, engine_s: float = 0.0) -> Head:
        """This head, stamped with the replica and adapter that served it, the seconds its load took and the
        seconds the replica had the request until this head."""
        return replace(self, replica=replica, lora_name=lora_name, load_s=load_s, engine_s=engine_s)


@dataclass(frozen=True)
class Body:
    """The one JSON body that follows a non-streaming :class:`Head`."""

    body: dict[str, Any]


EngineItem = Head | Body | str
"""An item of an engine's answer stream."""


async def whole(items: Any) -> tuple[Head, dict[str, Any]]:
    """A non-streaming engine answer (an async iterator of :data:`EngineItem`) as (head, JSON body);
    ValueError when the answer is a stream or out of protocol (tests and tools read answers through this)."""
    got = [item async for item in items]
    if len(got) != 2 or not isinstance(got[0], Head) or not isinstance(got[1], Body) or got[0].stream:
        kinds = [type(x).__name__ for x in got[:4]]
        raise ValueError(f"expected a Head then one Body, got {kinds}{' ...' if len(got) > 4 else ''}")
    return got[0], got[1].body
