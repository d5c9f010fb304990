"""The base model and the engine's configuration (``model`` and ``engine`` sections)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from serving.config_base import Strict

BUNDLED_TEMPLATES = {"chatml-tools": "chatml_tools.jinja"}


def read_chat_template(spec: str) -> str:
    """The Jinja source of a bundled template name or a template file; ValueError says what is wrong."""
    import jinja2

    if spec in BUNDLED_TEMPLATES:
        path = Path(__file__).parent.parent / "templates" / BUNDLED_TEMPLATES[spec]
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


class ModelConfig(Strict):
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


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.29's MaxLoRARanks


class EngineConfig(Strict):
    """vLLM engine arguments that matter here; anything else goes in ``extra``."""

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
        description="KV-cache size in bytes (set it on CPU); null lets vLLM size it. Not given: 256 MiB on CPU, "
        "null on CUDA (sized from gpu_memory_utilization).",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="GPU only: fraction of memory to use."
    )
    max_num_seqs: int = Field(default=64, gt=0, description="Maximum sequences batched together.")
    max_loras: int = Field(default=4, gt=0, description="Adapters active in one batch (slots).")
    max_cpu_loras: int = Field(default=16, gt=0, description="Adapters resident per replica (LRU beyond).")
    max_lora_rank: int = Field(
        default=64,
        gt=0,
        description="Largest adapter (or composed stack) rank accepted; every slot is this size, so on a GPU "
        "every adapter pays this rank in vLLM's kernels: use the smallest of vLLM's sizes (1, 8, 16, 32, 64, "
        "128, 256, 320, 512) that covers your stacks (an engine replica logs the registry's largest).",
    )
    enforce_eager: bool = Field(
        default=True,
        description="Skip CUDA graphs (faster start; needed on CPU). Not given: true on CPU, false on CUDA (CUDA "
        "graphs: much faster decoding).",
    )
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
    cpu_lora: Literal["grouped", "exact", "compact", "vllm"] = Field(
        default="grouped",
        description="CPU only: 'grouped' applies LoRA with a few batched ops per layer for all adapter slots in "
        "the batch; a probe on this CPU checks each layer shape: bit-identical to vLLM's ops, or not but with "
        "its error against float64 within 2x vLLM's own (both served; a layer over the bound runs vLLM's ops; "
        "verdicts in the log, the engine's stats and the rmn_cpu_lora_layer_shapes gauge; "
        "serving/engines/cpu_lora/); 'compact' serves every layer whose probe finds the compact arithmetic "
        "(bf16 matmuls, two a layer) within the same bound with it, even where the grouped one gives vLLM's bits "
        "(never vLLM's bits: greedy text may part from vLLM's at near-ties); 'exact' serves the grouped "
        "arithmetic only where it is bit-identical (vLLM's slower ops elsewhere); 'vllm' keeps vLLM's per-token "
        "ops everywhere (with the index -1 fix).",
    )
    cpu_executor: Literal["uni", "mp"] = Field(
        default="uni",
        description="CPU only, one worker (no tensor/pipeline parallelism): 'uni' runs vLLM's model worker in "
        "its engine-core process (no hand-off between two processes, whose busy-wait takes a core's share: 1.12x "
        "the base model's tokens/s on 2 cores, bench/results/peer-executor.json), its OpenMP threads bound to "
        "the replica's cores as vLLM binds a worker's (a single thread: left to the OS); 'mp': vLLM's default, "
        "the worker in a process of its own.",
    )
    lora_target_modules: list[str] | Literal["registry"] | None = Field(
        default=None,
        description="Module names that get LoRA (e.g. ['q_proj', 'v_proj']: vLLM wraps only those layers, so "
        "kernels do not run over zero weights of the others — on a GPU each wrapped layer costs a LoRA kernel per "
        "step); 'registry': the modules the registry's adapters target, read when an engine replica starts; "
        "null: every supported module. An adapter targeting others is refused at upload and at load (400).",
    )
    gpu_placement: Literal["bundles", "actor"] = Field(
        default="bundles",
        description="With tensor x pipeline parallel size above 1 on cuda: bundles: one placement-group bundle "
        "per GPU worker (as Ray Serve LLM does; vLLM's ray executor; workers may span nodes); actor: the "
        "replica holds every GPU itself (vLLM's mp executor; one node).",
    )
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        default="PACK",
        description="Ray placement strategy of the bundles (gpu_placement: bundles): PACK keeps the workers on "
        "as few nodes as fit, STRICT_PACK on one node.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="More vLLM engine args, passed through verbatim."
    )

    @property
    def parallel_size(self) -> int:
        """GPUs one engine uses: tensor x pipeline parallel size (``extra``)."""
        return int(self.extra.get("tensor_parallel_size", 1)) * int(
            self.extra.get("pipeline_parallel_size", 1)
        )

    @property
    def gpu_bundles(self) -> bool:
        """Whether the engine's GPU workers run in placement-group bundles (vLLM's ray executor)."""
        return self.device == "cuda" and self.parallel_size > 1 and self.gpu_placement == "bundles"

    @model_validator(mode="before")
    @classmethod
    def _device_defaults(cls, data: Any) -> Any:
        """Defaults that depend on the device, for the fields the config does not set."""
        if isinstance(data, dict) and data.get("device") == "cuda":
            data = {"kv_cache_memory_bytes": None, "enforce_eager": False, **data}
        return data

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_bucket(cls, v: int) -> int:
        if v not in LORA_RANKS:
            bigger = [r for r in LORA_RANKS if r >= v]
            hint = f"; the smallest that covers {v} is {bigger[0]}" if bigger else ""
            raise ValueError(f"must be one of vLLM's LoRA ranks {list(LORA_RANKS)}{hint}")
        return v

    @model_validator(mode="after")
    def _executor(self) -> EngineConfig:
        backend = self.extra.get("distributed_executor_backend")
        if self.gpu_bundles and backend not in (None, "ray"):
            raise ValueError(
                f"extra.distributed_executor_backend is {backend!r} but gpu_placement is bundles, whose workers "
                "run on Ray: leave it unset (ray) or set gpu_placement: actor"
            )
        return self

    @model_validator(mode="after")
    def _slots(self) -> EngineConfig:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras")
        return self
