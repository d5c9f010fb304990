"""The ``adapters`` section: the registry (a directory or an object store) and the node-local caches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from adapters import AdapterRegistry
from serving.config_base import Strict


class AdaptersConfig(Strict):
    """Where adapters are registered, and the node-local caches that serve them."""

    root: str = Field(
        description="Adapter registry: a directory (a shared mount when several nodes serve), or an "
        "object-store URL such as s3://bucket/prefix (any fsspec protocol whose package is installed)."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the object-store client (fsspec/s3fs), e.g. {endpoint_url: "
        "http://minio:9000} or {anon: true}; credentials default to the standard chain (AWS_* env, "
        "instance role). Ignored for a directory.",
    )
    store_retries: int = Field(
        default=3, ge=1, le=10, description="Attempts per object-store call (backoff 0.2 s, 0.4 s, ...)."
    )
    store_timeout_s: float = Field(
        default=5.0, gt=0, description="Connect and read timeout of one object-store call."
    )
    metadata_ttl_s: float | None = Field(
        default=None,
        ge=0,
        description="How long a replica reuses an adapter's version list: new versions and retirements "
        "reach every replica within this time. null: 0 for a directory, 2 s for an object store.",
    )
    download_root: Path | None = Field(
        default=None,
        description="Node-local cache of adapter files downloaded from an object store, keyed by sha256, "
        "shared by the replicas on a node; '{node}' is replaced by the Ray node id. null: "
        "<system temp dir>/rmn-adapters.",
    )
    download_max_bytes: int = Field(
        default=4 << 30,
        gt=0,
        description="Download cache bound (LRU beyond); size it to the adapters a node serves at once.",
    )
    cache_root: Path | None = Field(
        default=None,
        description="Node-local cache of composed stacks ('{node}': the Ray node id); null: "
        "<system temp dir>/rmn-composites.",
    )
    cache_max_bytes: int = Field(
        default=2 << 30, gt=0, description="Composite cache size bound (LRU beyond)."
    )
    compress_overflow: bool = Field(
        default=False,
        description="When a stack's total rank exceeds engine.max_lora_rank: false refuses it (400); "
        "true compresses it by truncated SVD to max_lora_rank (approximate; error recorded).",
    )

    max_upload_bytes: int = Field(
        default=256 << 20,
        gt=0,
        description="Largest POST /v1/adapters body (both files and the form); larger gets 413.",
    )
    training_device: Literal["auto", "gpu", "cpu"] = Field(
        default="auto",
        description="Where POST /v1/adapters/train jobs run: auto: on a GPU when one is free at submission, "
        "else on CPU (never waiting for the engines' GPUs); gpu: on a GPU, refused (503 + Retry-After) when "
        "none is free; cpu: on CPU even on GPU nodes.",
    )
    training_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources a GPU training job also asks for: a training group (e.g. "
        "{training: 1} offered by a KubeRay worker group of its own); GPU jobs then wait for that group "
        "instead of needing a GPU free at submission. A job is refused when no node offers them.",
    )

    @field_validator("root", mode="after")
    @classmethod
    def _root(cls, v: str) -> str:
        from adapters.store import is_url

        if not v.strip():
            raise ValueError("must name a directory or an object-store URL")
        return v.rstrip("/") if is_url(v) else str(Path(v.removeprefix("file://")).expanduser().resolve())

    def cache_dir(self, node: str = "local") -> Path:
        """The composite cache directory on this node."""
        import tempfile

        root = self.cache_root or Path(tempfile.gettempdir()) / "rmn-composites"
        return Path(str(root).replace("{node}", node))

    def download_dir(self, node: str = "local") -> Path:
        """The object-store download cache directory on this node."""
        import tempfile

        root = self.download_root or Path(tempfile.gettempdir()) / "rmn-adapters"
        return Path(str(root).replace("{node}", node))

    def registry(self, max_rank: int, node: str = "local") -> AdapterRegistry:
        """The adapter registry this config names, as seen from ``node`` (its download cache)."""
        from adapters.store import open_store

        store = open_store(
            self.root,
            cache_root=self.download_dir(node),
            cache_max_bytes=self.download_max_bytes,
            options=self.storage_options,
            retries=self.store_retries,
            timeout_s=self.store_timeout_s,
        )
        return AdapterRegistry(self.root, max_rank=max_rank, store=store, metadata_ttl_s=self.metadata_ttl_s)
