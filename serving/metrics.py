"""Prometheus metrics (Ray Serve metrics API; scraped from each Ray node's metrics export port).

Names carry Ray's ``ray_`` prefix in the scrape: ``ray_rmn_requests_total`` etc. The ``composition`` label
is bounded: the first ``top_n`` compositions a router replica sees keep their own label, later ones
are ``other`` (plus ``base`` for the base model); ``component`` is bounded by the registry's size.
"""

from __future__ import annotations

from collections import Counter as Counter_
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram


def _keys(*names: str) -> Any:
    """Tag keys (Ray annotates ``tag_keys`` as ``Tuple[str]``, a one-element tuple, though it takes any)."""
    return names


LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


class RouterMetrics:
    """Request, latency and token metrics by composition and component."""

    def __init__(self, top_n: int = 20) -> None:
        self.top_n = top_n
        self._seen: set[str] = set()
        self.requests = Counter(
            "rmn_requests_total",
            description="Requests by composition and HTTP status.",
            tag_keys=_keys("composition", "status"),
        )
        self.latency = Histogram(
            "rmn_request_latency_seconds",
            description="Total request latency.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("composition",),
        )
        self.ttft = Histogram(
            "rmn_time_to_first_token_seconds",
            description="Time to the first streamed token (non-streaming: to the full answer).",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("composition",),
        )
        self.tokens = Counter(
            "rmn_tokens_total",
            description="Prompt (in) and completion (out) tokens.",
            tag_keys=_keys("composition", "direction"),
        )
        self.components = Counter(
            "rmn_component_requests_total",
            description="Requests served per adapter.",
            tag_keys=("component",),
        )
        # experiment labels are "<tenant>/<id>": bounded by the tenants times MAX_PER_TENANT experiments each
        self.experiment_requests = Counter(
            "rmn_experiment_requests_total",
            description="Requests assigned to an experiment's arm.",
            tag_keys=_keys("experiment", "arm"),
        )
        self.experiment_outcomes = Counter(
            "rmn_experiment_outcomes_total",
            description="Outcomes reported for an experiment's requests (POST /v1/feedback).",
            tag_keys=_keys("experiment", "arm", "outcome"),
        )
        self.sheds = Counter(
            "rmn_requests_shed_total",
            description="Requests refused by admission control (503 at once), by reason.",
            tag_keys=("reason",),
        )
        self.retries = Counter(
            "rmn_request_retries_total",
            description="Requests retried on another engine replica, by reason.",
            tag_keys=("reason",),
        )
        self.queue_wait = Histogram(
            "rmn_queue_wait_seconds",
            description="Time a request waited in the router's fair queue before dispatch.",
            boundaries=LATENCY_BUCKETS,
        )

    def label(self, composition: str | None) -> str:
        """Bounded label for a composite id (None: the base model)."""
        if composition is None:
            return "base"
        if composition in self._seen or len(self._seen) < self.top_n:
            self._seen.add(composition)
            return composition
        return "other"


class EngineMetrics:
    """Adapter residency and composite-cache metrics of one engine replica."""

    def __init__(self) -> None:
        self.loads = Counter(
            "rmn_adapter_loads_total", description="Adapters (or composites) loaded into vLLM."
        )
        self.evictions = Counter("rmn_adapter_evictions_total", description="Adapters evicted (LRU).")
        self.cache_hits = Counter("rmn_composite_cache_hits_total", description="Composite cache hits.")
        self.cache_misses = Counter("rmn_composite_cache_misses_total", description="Composites built.")
        self.build_seconds = Histogram(
            "rmn_composite_build_seconds",
            description="Composite build time.",
            boundaries=[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
        )
        self.resident = Gauge(
            "rmn_engine_loras_resident",
            description="Adapters (or composites) resident in this engine replica's vLLM (bounded: a count).",
        )
        self.cpu_lora_layers = Gauge(
            "rmn_cpu_lora_layer_shapes",
            description="CPU LoRA: layer shapes probed, by how they are served (compact: the compact arithmetic, "
            "its error against float64 within 2x vLLM's own; grouped: the fused arithmetic, bit-identical to "
            "vLLM's ops on this CPU; bounded: the fused arithmetic, not bit-identical, within the same bound; "
            "vllm: vLLM's own ops).",
            tag_keys=("path",),
        )

    def record_numerics(self, numerics: dict[str, Any]) -> None:
        """Set the layer-shape gauge from an engine's ``numerics()`` (nothing off CPU)."""
        report = numerics.get("cpu_lora")
        reports = report if isinstance(report, list) else [report] if report else []
        layers = [layer for r in reports for layer in r.get("layers", [])]
        if reports:
            paths = Counter_(_path(layer) for layer in layers)
            for path in ("compact", "grouped", "bounded", "vllm"):
                self.cpu_lora_layers.set(paths[path], tags={"path": path})


def _path(layer: dict[str, Any]) -> str:
    """How one probed layer shape is served: compact, grouped (vLLM's bits), bounded, or vllm (vLLM's ops)."""
    arithmetic = layer.get("arithmetic", "grouped" if layer["identical"] else "vllm")
    if arithmetic in ("vllm", "compact"):
        return str(arithmetic)
    return "grouped" if layer["identical"] else "bounded"


class CleanRoomMetrics:
    """Clean-room decisions and differential-privacy spend, by retailer."""

    def __init__(self) -> None:
        self.queries = Counter(
            "rmn_cleanroom_queries_total",
            description="Clean-room queries by retailer and decision (accepted | refused | rate_limited).",
            tag_keys=_keys("retailer", "decision"),
        )
        self.epsilon = Counter(
            "rmn_cleanroom_epsilon_spent_total",
            description="Differential-privacy epsilon spent, by retailer.",
            tag_keys=_keys("retailer"),
        )
        self.room_used = Gauge(
            "rmn_cleanroom_room_epsilon_used_ratio",
            description="Share of a room's epsilon budget (all tenants together) spent, by retailer: at 1 the "
            "room answers no more noisy queries.",
            tag_keys=_keys("retailer"),
        )
