"""The application config: one pydantic model, loaded from YAML at the edge.

Contract: :func:`load_config` returns a validated :class:`AppConfig` or raises :class:`ConfigError` whose
message names the file and the offending field. Relative paths are resolved against the current
directory at load time, so Ray workers on the same node see absolute paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from adapters import AdapterRegistry
from cleanroom.policy import CleanRoomPolicy
from federation.config import FederationConfig
from planning.market import MarketConfig


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


BUNDLED_TEMPLATES = {"chatml-tools": "chatml_tools.jinja"}


def read_chat_template(spec: str) -> str:
    """The Jinja source of a bundled template name or a template file; ValueError says what is wrong."""
    import jinja2

    if spec in BUNDLED_TEMPLATES:
        path = Path(__file__).parent / "templates" / BUNDLED_TEMPLATES[spec]
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            known = ", ".join(BUNDLED_TEMPLATES)
            raise ValueError(f"{spec!r} is neither a bundled template ({known}) nor a file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the chat template {path}: {e}") from e
    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat template {path} line {e.lineno}: {e.message}") from e
    return text


class ModelConfig(_Strict):
    """The base model every adapter applies to."""

    path: Path = Field(
        description="Local directory of the Hugging Face model (config, safetensors, tokenizer)."
    )
    served_name: str = Field(
        default="base",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="Name clients use for the base model; adapters are '<served_name>:<adapter>'.",
    )
    chat_template: str | None = Field(
        default=None,
        description="Chat template replacing the model's own: 'chatml-tools' (bundled: ChatML with a "
        "Hermes-style tools section, for ChatML models such as SmolLM2) or a Jinja file, read when the config "
        "loads (engine nodes need not have it); null: the model's own template.",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Default keywords for the chat template (a request's chat_template_kwargs win), e.g. "
        "{default_system: ...} for 'chatml-tools'.",
    )
    tool_call_parser: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="vLLM tool-call parser matching the template's tool-call format ('hermes' for "
        "'chatml-tools'; checked against vLLM's parsers when the engine starts). Needed for any tool_choice "
        "but 'none': named and 'required' are forced by structured outputs; null: such requests get 400.",
    )
    auto_tool_choice: bool = Field(
        default=True,
        description="With a tool_call_parser: allow tool_choice 'auto' (the model decides; its template must "
        "show it the tools).",
    )
    _chat_template_text: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _read_template(self) -> ModelConfig:
        self._chat_template_text = (
            None if self.chat_template is None else read_chat_template(self.chat_template)
        )
        return self

    def chat_template_text(self) -> str | None:
        """The chat template's Jinja source (read at validation, so it travels with the config), or None."""
        return self._chat_template_text


class EngineConfig(_Strict):
    """vLLM engine arguments that matter here; anything else goes in ``extra``."""

    kind: Literal["vllm", "fake"] = Field(
        default="vllm",
        description="vllm: the real engine. fake: deterministic text without a model (the fast Serve test tier).",
    )
    fake_token_delay_s: float = Field(
        default=0.0, ge=0, le=10, description="fake engine only: seconds per generated word."
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu", description="Where vLLM runs; same code either way."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Weights dtype."
    )
    max_model_len: int | None = Field(
        default=None,
        gt=0,
        description="Maximum prompt + completion tokens; null takes the model's own limit.",
    )
    kv_cache_memory_bytes: int | None = Field(
        default=256 << 20,
        gt=0,
        description="KV-cache size in bytes (always set it on CPU); null lets vLLM size it.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="GPU only: fraction of memory to use."
    )
    max_num_seqs: int = Field(default=64, gt=0, description="Maximum sequences batched together.")
    max_loras: int = Field(default=4, gt=0, description="Adapters active in one batch (slots).")
    max_cpu_loras: int = Field(default=16, gt=0, description="Adapters resident per replica (LRU beyond).")
    max_lora_rank: int = Field(
        default=64, gt=0, description="Largest adapter rank accepted; slots are this size."
    )
    enforce_eager: bool = Field(default=True, description="Skip CUDA graphs (faster start; needed on CPU).")
    seed: int = Field(default=0, description="Engine seed.")
    compact_json: bool = Field(
        default=True,
        description="Guided decoding by xgrammar with compact JSON (no free whitespace: small models otherwise spend "
        "tokens on it), forced tool calls included (VLLM_ENFORCE_STRICT_TOOL_CALLING=0 unless the env sets it).",
    )
    json_object: Literal["bounded", "vllm"] = Field(
        default="bounded",
        description="response_format json_object: 'bounded' serves it with a compact JSON grammar whose strings, "
        "keys, members and depth are bounded, plus repetition_penalty 1.1 unless the request sets one (small "
        "models otherwise repeat until max_tokens; serving/engines/json_mode.py); 'vllm': vLLM's own.",
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU only: cores this engine replica binds its vLLM threads to, claimed so that replicas on "
        "one node do not overlap (serving/engines/cpu_threads.py); null: the replica's num_cpus (at least 1). "
        "Ignored when the replica's env sets VLLM_CPU_OMP_THREADS_BIND to anything but 'auto'.",
    )
    cpu_lora: Literal["grouped", "vllm"] = Field(
        default="grouped",
        description="CPU only: 'grouped' applies LoRA with a few batched ops per layer for all adapter slots in "
        "the batch, bit-identical to vLLM's ops (serving/engines/cpu_lora.py); 'vllm' keeps vLLM's per-token "
        "ops (with the index -1 fix).",
    )
    lora_target_modules: list[str] | None = Field(
        default=None,
        description="vLLM module names that get LoRA (e.g. ['qkv_proj'] when every adapter targets q/k/v "
        "only; faster on CPU); null: every supported module. Adapters targeting others fail to load.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="More vLLM engine args, passed through verbatim."
    )

    @model_validator(mode="after")
    def _slots(self) -> EngineConfig:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras")
        return self


class AutoscalingConfig(_Strict):
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


class DeploymentConfig(_Strict):
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
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the replica processes."
    )

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``serve.deployment(...)``/``.options(...)``."""
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
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


_CPU_ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "auto",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


class HttpConfig(_Strict):
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


class AdmissionConfig(_Strict):
    """Admission control and fair queueing in the router (serving/admission.py): at most the engines'
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
        description="Seconds per requested output token assumed until requests have been measured (the "
        "estimate then follows an EWMA of measured seconds per requested token).",
    )
    default_max_tokens: int = Field(
        default=256, ge=1, description="Cost assumed for a request that does not set max_tokens."
    )
    max_queue: int = Field(default=1024, ge=1, description="Waiting requests per router replica, at most.")


class AdaptersConfig(_Strict):
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


class CleanRoomRetailer(_Strict):
    """One retailer's clean room."""

    db_path: Path = Field(description="DuckDB file with the retailer's events (`rmn cleanroom load`).")
    policy: CleanRoomPolicy = Field(description="What tenants may ask of this retailer's data.")

    @field_validator("db_path", mode="after")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()


class CleanRoomConfig(_Strict):
    """Clean rooms served at /v1/cleanroom/* (needs `federation`: queries are per tenant)."""

    retailers: list[CleanRoomRetailer] = Field(min_length=1, description="One entry per retailer.")
    state_dir: Path | None = Field(
        default=None,
        description="Durable state of the comparison's market rooms (their epsilon ledgers, releases, "
        "audit; keyed by retailer and seed); null: `rmn-state/` next to the first retailer's DuckDB file. "
        "Never a temp dir: budgets must survive restarts and rebuilds.",
    )

    def state_root(self) -> Path:
        """Where durable clean-room state lives on the clean-room replica's node."""
        root = self.state_dir or self.retailers[0].db_path.parent / "rmn-state"
        return root.expanduser().resolve()

    deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(num_cpus=0.25),
        description="Ray Serve options (keep 1 replica).",
    )


class GovernanceConfig(_Strict):
    """A brand's rules for ad lines (each creative gets a verdict against them)."""

    banned_words: list[str] = Field(
        default_factory=lambda: ["guaranteed", "cure", "best ever", "#1", "risk-free", "miracle"],
        description="Words or claims an ad line may not contain (case-insensitive).",
    )
    max_chars: int = Field(default=90, gt=0, description="Longest allowed ad line.")
    min_chars: int = Field(default=10, ge=0, description="Shortest allowed ad line.")


class ComparisonConfig(_Strict):
    """`POST /v1/plans/compare` (needs `federation` and `cleanroom`): the simulated market, the planner and
    comparison deployments, and the text the composed adapters write."""

    market: MarketConfig = Field(
        default_factory=MarketConfig, description="The synthetic market (seed, sizes)."
    )
    planner_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(num_replicas=2, num_cpus=0.1),
        description="Ray Serve options of the planner (2 replicas: the two plans run side by side).",
    )
    comparison_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(num_cpus=0.1),
        description="Ray Serve options of the comparison deployment.",
    )
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig, description="Ad-line rules.")
    rationale_max_tokens: int = Field(default=160, gt=0, le=4096, description="Tokens of the JSON rationale.")
    creative_max_tokens: int = Field(default=40, gt=0, le=1024, description="Tokens per ad line.")


class AppConfig(_Strict):
    """Everything ``rmn serve`` needs."""

    model: ModelConfig = Field(description="Base model.")
    adapters: AdaptersConfig = Field(description="Adapter registry.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="vLLM engine arguments.")
    engine_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(env=dict(_CPU_ENGINE_ENV)),
        description="Ray Serve options of the engine deployment.",
    )
    router_deployment: DeploymentConfig = Field(
        default_factory=lambda: DeploymentConfig(
            max_ongoing_requests=256, max_queued_requests=256, num_cpus=0.1
        ),
        description="Ray Serve options of the OpenAI-compatible router (ingress).",
    )
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP listener.")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Admission control and fair queueing in the router."
    )
    federation: FederationConfig | None = Field(
        default=None, description="Tenants and stack policy; null serves without authentication."
    )
    cleanroom: CleanRoomConfig | None = Field(default=None, description="Clean rooms; null: none.")
    comparison: ComparisonConfig | None = Field(
        default=None, description="Planning and comparison (/v1/plans/compare); null: off."
    )

    @model_validator(mode="after")
    def _cleanroom_needs_tenants(self) -> AppConfig:
        if self.cleanroom is not None and self.federation is None:
            raise ValueError("cleanroom needs a federation section: clean-room queries are per tenant")
        if self.comparison is not None and self.cleanroom is None:
            raise ValueError("comparison needs a cleanroom section: one plan is made through the clean room")
        return self

    def market_policy(self) -> CleanRoomPolicy:
        """The clean-room policy of the comparison market's retailer (its configured one, else defaults)."""
        retailer = self.comparison.market.retailer if self.comparison else ""
        for r in self.cleanroom.retailers if self.cleanroom else []:
            if r.policy.retailer == retailer:
                return r.policy
        return CleanRoomPolicy(retailer=retailer)

    @field_validator("model", "adapters", mode="after")
    @classmethod
    def _absolute(cls, v: Any) -> Any:
        for name in ("path", "cache_root", "download_root"):
            if getattr(v, name, None) is not None:
                setattr(v, name, Path(getattr(v, name)).expanduser().resolve())
        return v


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path | str, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Read the YAML file at ``path`` into ``model``; ConfigError names the file and the fields."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping, got {type(raw).__name__}")
    raw.update(overrides or {})
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid config in {path}:\n{_format_errors(e)}") from e


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> AppConfig:
    """Read, validate and return the app config at ``path`` (with optional top-level overrides)."""
    return load_yaml_model(path, AppConfig, overrides)
