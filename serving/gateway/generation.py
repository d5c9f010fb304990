"""One generation request on its way through the gateway: what every step of the path needs, in one object."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from adapters.cache import ResolvedStack
from serving.admission import Lease


@dataclass
class Generation:
    """One generation request on its way through the path (what every step needs)."""

    kind: str
    body: dict[str, Any]
    request_id: str
    who: str
    stack: ResolvedStack | None
    lora_name: str
    label: str
    started: float
    deadline: float
    cost: float
    client_usage: bool
    headers: dict[str, str] = field(default_factory=dict)
    lease: Lease | None = None
    graph: dict[str, Any] | None = None  # the composition graph, when the request asked for it

    def left(self) -> float:
        """Seconds to the deadline."""
        return self.deadline - time.monotonic()


def cost_of(body: dict[str, Any], default: int) -> float:
    """A request's cost for admission: 1 + the output tokens it asks for (malformed values: the default;
    the engine answers them 400)."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked < 1_000_000:
        return 1.0 + asked
    return 1.0 + default
