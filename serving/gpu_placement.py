"""Serve options of the engine deployment where one engine spans several GPUs (tensor x pipeline parallel size
above 1 on cuda, ``engine.gpu_placement: bundles``), as Ray Serve LLM builds them: one placement-group bundle per
GPU worker (``{GPU: 1}``), the replica actor's own CPUs and custom resources added to the first bundle (the
replica runs in it, beside its first worker), the replica actor itself asking for no GPU, the bundles placed by
``engine.placement_strategy``. vLLM's ray executor then puts its workers in those bundles (the engine sets the
replica's placement group on vLLM's parallel config). Otherwise the deployment's own options, unchanged.
"""

from __future__ import annotations

from typing import Any

from serving.config import AppConfig


def engine_serve_options(config: AppConfig) -> dict[str, Any]:
    """Keyword arguments for the engine deployment (see the module contract)."""
    opts = config.engine_deployment.serve_options()
    engine = config.engine
    if not engine.gpu_bundles:
        return opts
    actor = opts["ray_actor_options"]
    replica = {
        "CPU": float(actor["num_cpus"]),
        **{k: float(v) for k, v in actor.get("resources", {}).items()},
    }
    bundles: list[dict[str, float]] = [{"GPU": 1.0} for _ in range(engine.parallel_size)]
    bundles[0] = {
        k: bundles[0].get(k, 0.0) + replica.get(k, 0.0) for k in sorted(bundles[0].keys() | replica.keys())
    }
    actor["num_gpus"] = 0  # the GPUs are the workers', one in each bundle
    opts["placement_group_bundles"] = bundles
    opts["placement_group_strategy"] = engine.placement_strategy
    return opts
