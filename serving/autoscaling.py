"""The engine deployment's autoscaling policy: scale on demand, not on what got through.

The router queues what the engines cannot take yet (serving/admission.py), so Serve's default signal, the
requests ongoing at the engine replicas, stops growing at their ``max_ongoing_requests`` while the backlog
behind them grows unseen. Each engine replica therefore reports the routers' backlog (read from the app's
board, :mod:`serving.cluster_board`) as a custom autoscaling metric, and :func:`engine_policy` wants
(ongoing + backlog) / ``target_ongoing_requests`` replicas. Serve wraps the policy with the deployment's
bounds and up/down-scale delays.
"""

from __future__ import annotations

from typing import Any

BACKLOG_METRIC = "router_backlog"
POLICY = "serving.autoscaling:engine_policy"


def engine_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Desired engine replicas for Serve's ``AutoscalingContext``: requests ongoing at the engines plus the
    routers' backlog (every replica reports the same cluster-wide figure: the freshest, largest counts once)."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    reported = (ctx.aggregated_metrics or {}).get(BACKLOG_METRIC) or {}
    backlog = max(reported.values(), default=0.0)
    demand = float(ctx.total_num_requests) + float(backlog)
    return demand / ctx.config.get_target_ongoing_requests(), {"backlog": backlog}
