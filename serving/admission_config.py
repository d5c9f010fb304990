"""The ``admission`` config section: what :class:`serving.admission.FairScheduler` is given per router replica."""

from __future__ import annotations

from pydantic import Field

from serving.config_base import Strict


class AdmissionConfig(Strict):
    """Admission control and fair queueing in the router (:mod:`serving.admission`): at most the engines'
    concurrency is dispatched; the rest waits in per-tenant queues served fairly (tenant `weight`), and a
    request whose estimated wait exceeds `max_wait_share` of the deadline is refused at once (503 +
    Retry-After)."""

    enabled: bool = Field(default=True, description="Off: every request goes straight to Serve's queue.")
    max_wait_share: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Longest estimated queue wait, as a share of http.request_timeout_s; above it: 503 at once.",
    )
    slots: int | None = Field(
        default=None,
        ge=1,
        description="Requests one router replica dispatches at once; null: running engine replicas x "
        "engine_deployment.max_ongoing_requests / router replicas (refreshed every 2 s; shrunk at once when "
        "Serve's queue refuses a dispatched request).",
    )
    initial_token_s: float = Field(
        default=0.05,
        gt=0,
        description="Seconds per requested output token assumed until requests have been measured (then: a "
        "per-request overhead plus seconds per requested token, fitted over the last ~10 completed requests).",
    )
    default_max_tokens: int = Field(
        default=256, ge=1, description="Cost assumed for a request that does not set max_tokens."
    )
    max_queue: int = Field(default=1024, ge=1, description="Waiting requests per router replica, at most.")
    reserve_slots: int = Field(
        default=1,
        ge=0,
        description="Slots of a router replica that one tenant may not take while another tenant has sent a "
        "request there in the last reserve_window_s: kept free, so that tenant's next request starts at once "
        "instead of waiting behind a flood; at most a quarter of the slots (none below 4). A lone tenant gets "
        "every slot; 0: no reserve.",
    )
    reserve_window_s: float = Field(
        default=30.0,
        gt=0,
        description="How recently another tenant must have sent a request for the reserve to hold.",
    )
    cluster_wide: bool = Field(
        default=True,
        description="Share tenants' rate limits and the routers' backlog through one small actor per app: a "
        "tenant's limit holds across router replicas, and the engine deployment autoscales on ongoing + queued "
        "requests (serving/autoscaling.py). Off: each router replica limits alone; the engine scales on "
        "ongoing requests only.",
    )
