"""Reading the engine replicas' state in Serve-level tests (through a Serve handle)."""

from __future__ import annotations

from typing import Any


def engine_stats(app: str, calls: int = 30) -> dict[str, dict[str, Any]]:
    """``stats()`` of every engine replica of Serve app ``app``, by replica id (handle calls land on
    replicas at random)."""
    from ray import serve

    engine = serve.get_deployment_handle("engine", app)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(calls):
        s = engine.stats.remote().result(timeout_s=30)
        seen[s["replica"]] = s
    return seen


def total_loads(stats: dict[str, dict[str, Any]]) -> int:
    """Adapter loads summed over replicas."""
    return sum(int(s["loads"]) for s in stats.values())
