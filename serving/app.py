"""The app builder: binds the deployments from one :class:`AppConfig`.

``build_app(config)`` for Python; ``app_builder({"config": path})`` for ``serve run``/``serve build``
(``serve run serving.app:app_builder config=deploy/serve-cpu.yaml``).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serving.autoscaling import POLICY as ENGINE_POLICY
from serving.cleanroom_service import CleanRoomService
from serving.comparison import ComparisonService, PlannerService
from serving.config import AppConfig, load_config
from serving.engine import EngineDeployment
from serving.engines import EngineFactory
from serving.gateway.ingress import Router
from serving.gpu_placement import engine_serve_options


def build_app(config: AppConfig, engine_cls: EngineFactory | None = None) -> Application:
    """Router (ingress) → engine deployment, and when configured the clean-room deployment and the
    comparison deployment (→ planner deployment → clean-room deployment). ``engine_cls``: the engine the
    engine replicas make (vLLM's when None; the Serve test tier passes the FakeEngine)."""
    engine_opts = engine_serve_options(config)
    if "autoscaling_config" in engine_opts and config.admission.enabled and config.admission.cluster_wide:
        engine_opts["autoscaling_config"]["policy"] = {"policy_function": ENGINE_POLICY}  # ongoing + backlog
    engine = serve.deployment(name="engine", **engine_opts)(EngineDeployment)
    router = serve.deployment(name="router", **config.router_deployment.serve_options())(Router)
    cleanroom = comparison = None
    if config.cleanroom is not None:
        opts = {**config.cleanroom.deployment.serve_options(), "num_replicas": 1}  # DuckDB: one writer
        opts.pop("autoscaling_config", None)
        cleanroom = serve.deployment(name="cleanroom", **opts)(CleanRoomService).bind(config)
    if config.comparison is not None:
        c = config.comparison
        planner = serve.deployment(name="planner", **c.planner_deployment.serve_options())(PlannerService)
        compare = serve.deployment(name="comparison", **c.comparison_deployment.serve_options())(
            ComparisonService
        )
        comparison = compare.bind(config, planner.bind(config, cleanroom), cleanroom)
    return router.bind(engine.bind(config, engine_cls), config, cleanroom, comparison)


def app_builder(args: dict[str, Any]) -> Application:
    """Ray Serve application builder: ``args["config"]`` is the path of an rmn YAML config."""
    if "config" not in args:
        raise ValueError("app_builder needs the argument config=<path to rmn config YAML>")
    return build_app(load_config(args["config"]))


# Named applications for `serve build` / `serve run` / KubeRay's serveConfigV2, which import an Application
# object by path: `serving.app:federated_cpu` is the app of deploy/rmn-federated-cpu.yaml, built on first
# access (nothing is read at import time). Config paths are relative to the working directory.
NAMED_CONFIGS = {
    "cpu": "deploy/rmn-cpu.yaml",
    "federated_cpu": "deploy/rmn-federated-cpu.yaml",
    "gpu": "deploy/k8s/gpu/rmn.yaml",
}


def __getattr__(name: str) -> Application:
    if name in NAMED_CONFIGS:
        return build_app(load_config(NAMED_CONFIGS[name]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
