"""The Ray Serve ingress deployment that serves the gateway app (bound by :func:`serving.app.build_app`)."""

from __future__ import annotations

from typing import Any

from ray import serve

from serving.config import AppConfig
from serving.gateway.app import api
from serving.gateway.state import Gateway
from serving.node import node_name


@serve.ingress(api)
class Router:
    """One router replica: the gateway app over the engine, clean-room and comparison handles."""

    def __init__(self, engine: Any, config: AppConfig, cleanroom: Any = None, comparison: Any = None) -> None:
        ctx = serve.get_replica_context()
        replica = (ctx.app_name, ctx.replica_id.unique_id)
        self.gateway = Gateway(config, engine, cleanroom, comparison, node=node_name(), replica=replica)

    async def admission(self) -> dict[str, Any]:
        """This replica's admission state (ops, tests): dispatch slots, requests in flight and waiting, the
        router replicas it divides the engines by, whether its rate limits are cluster-wide right now, its
        replica id and the cluster's demand it last read (routers' and tenants' requests running + waiting)."""
        gw = self.gateway
        s = gw.scheduler
        return {
            "slots": s.slots if s else None,
            "inflight": s.inflight if s else 0,
            "waiting": s.waiting if s else 0,
            "routers": gw.routers,
            "shared_limits": gw.limits is not None and not gw.limits.degraded,
            "replica": gw.replica_id,
            "cluster_demand": gw.cluster_demand,
        }
