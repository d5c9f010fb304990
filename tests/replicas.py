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


def serve_replicas(app: str, deployment: str) -> list[dict[str, Any]]:
    """The replicas of ``deployment`` as Serve's controller sees them (``replica_id``, ``state``,
    ``actor_name``, ...). A killed replica stays RUNNING here until the controller's next health check
    notices (``health_check_period_s``), unlike Ray's actor table."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    return list(details["applications"][app]["deployments"][deployment]["replicas"])
