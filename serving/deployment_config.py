"""Ray Serve options of a deployment (replicas, autoscaling, resources, environment) and the HTTP listener."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from serving.config_base import Strict


class AutoscalingConfig(Strict):
    """Ray Serve autoscaling for one deployment."""

    min_replicas: int = Field(default=1, ge=0, description="Lower bound of replicas.")
    max_replicas: int = Field(default=2, ge=1, description="Upper bound of replicas.")
    target_ongoing_requests: float = Field(
        default=8, gt=0, description="Ongoing requests per replica to aim for."
    )
    upscale_delay_s: float = Field(
        default=5, ge=0, description="Seconds of high load before adding replicas."
    )
    downscale_delay_s: float = Field(
        default=30, ge=0, description="Seconds of low load before removing replicas."
    )
    look_back_period_s: float = Field(
        default=30, gt=0, description="Window over which ongoing requests are averaged."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas is below min_replicas")
        return self


class DeploymentConfig(Strict):
    """Ray Serve options for one deployment."""

    num_replicas: int = Field(
        default=1, ge=1, description="Fixed replica count (ignored when autoscaling is set)."
    )
    autoscaling: AutoscalingConfig | None = Field(
        default=None, description="Autoscaling; null for fixed replicas."
    )
    max_ongoing_requests: int = Field(default=32, gt=0, description="Concurrent requests per replica.")
    max_queued_requests: int = Field(
        default=64,
        ge=-1,
        description="Requests queued per caller before it answers 503 at once; -1 unbounded.",
    )
    num_cpus: float = Field(default=1, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(default=0, ge=0, description="GPUs reserved per replica.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources reserved per replica (pins replicas to nodes that offer them, "
        "e.g. {accelerator_type:H100: 0.01} or a node label resource).",
    )
    max_replicas_per_node: int | None = Field(
        default=None, ge=1, description="At most this many replicas on one node (1: spread across nodes)."
    )
    graceful_shutdown_timeout_s: float = Field(
        default=30, ge=0, description="Time to finish in-flight requests."
    )
    health_check_period_s: float = Field(
        default=10,
        gt=0,
        description="Seconds between Serve's health checks of a replica: a replica whose process died is "
        "noticed (and replaced) at its next check, so this bounds how long the deployment counts a lost replica.",
    )
    health_check_timeout_s: float = Field(
        default=30, gt=0, description="A health check unanswered this long marks the replica unhealthy."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the replica processes."
    )

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``serve.deployment(...)``/``.options(...)``."""
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "ray_actor_options": {
                "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus,
                "runtime_env": {"env_vars": dict(self.env)},
            },
            "logging_config": {"encoding": "JSON", "log_level": "INFO"},
        }
        if self.resources:
            opts["ray_actor_options"]["resources"] = dict(self.resources)
        if self.max_replicas_per_node is not None:
            opts["max_replicas_per_node"] = self.max_replicas_per_node
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


CPU_ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "auto",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class HttpConfig(Strict):
    """Where the OpenAI-compatible API listens."""

    host: str = Field(default="127.0.0.1", description="Bind address (0.0.0.0 in containers).")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port.")
    request_timeout_s: float = Field(default=120, gt=0, description="Per-request deadline; past it, 504.")
    metrics_port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="Prometheus scrape port of the Ray node `rmn serve` starts (/metrics; every process on the node).",
    )
