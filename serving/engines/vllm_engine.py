"""vLLM behind a small async interface: OpenAI chat/completions with an optional LoRA, no Ray.

This is the only serving module that imports vLLM. It reuses vLLM's own OpenAI layer
(``init_app_state``: request models, chat templates, sampling parameters, SSE streaming), so the API
behaves exactly like ``vllm serve``. :meth:`VLLMEngine.handle` follows the engine protocol
(:mod:`serving.engines.protocol`): a :class:`~serving.replies.Head`, then one
:class:`~serving.replies.Body` (non-streaming answers and errors in OpenAI's shape) or SSE chunks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from federation.errors import InvalidRequest, first_error
from serving.engines.config import EngineConfig, ModelConfig
from serving.engines.json_mode import bounded_json_object
from serving.engines.protocol import Kind
from serving.errors import error_items
from serving.replies import Body, EngineItem, Head

log = logging.getLogger("ray.serve.rmn.engine")


def _vllm_args(model: ModelConfig, engine: EngineConfig) -> Any:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", str(model.path)])
    settings: dict[str, Any] = {
        "served_model_name": [model.served_name],
        "dtype": engine.dtype,
        "max_num_seqs": engine.max_num_seqs,
        "enable_lora": True,
        "max_loras": engine.max_loras,
        "max_cpu_loras": engine.max_cpu_loras,
        "max_lora_rank": engine.max_lora_rank,
        "enforce_eager": engine.enforce_eager,
        "seed": engine.seed,
        "disable_log_stats": False,
        "enable_log_requests": False,
    }
    if model.chat_template_text() is not None:
        settings["chat_template"] = model.chat_template_text()
    if model.chat_template_kwargs:
        settings["default_chat_template_kwargs"] = dict(model.chat_template_kwargs)
    if model.tool_call_parser is not None:
        settings["tool_call_parser"] = model.tool_call_parser
        settings["enable_auto_tool_choice"] = model.auto_tool_choice
    if isinstance(engine.lora_target_modules, list):  # "registry" is resolved by the engine deployment
        settings["lora_target_modules"] = list(engine.lora_target_modules)
    if engine.max_model_len is not None:
        settings["max_model_len"] = engine.max_model_len
    if engine.kv_cache_memory_bytes is not None:
        settings["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
    if engine.device == "cuda":
        settings["gpu_memory_utilization"] = engine.gpu_memory_utilization
        if engine.gpu_bundles:  # the workers run in the replica's placement-group bundles
            settings["distributed_executor_backend"] = "ray"
    else:  # the grouped CPU LoRA wrappers' verdicts, asked for by VLLMEngine.numerics
        settings["worker_extension_cls"] = "serving.engines.cpu_lora.wrapper.ReportExtension"
    if engine.compact_json:
        from vllm.config import StructuredOutputsConfig

        settings["structured_outputs_config"] = StructuredOutputsConfig(
            backend="xgrammar", disable_any_whitespace=True
        )
    settings.update(engine.extra)
    for key, value in settings.items():
        if not hasattr(args, key):
            raise ValueError(f"engine.extra: {key!r} is not a vLLM engine argument")
        setattr(args, key, value)
    check_tool_parser(args.tool_call_parser)
    return args


def check_tool_parser(name: str | None) -> None:
    """Raise ValueError naming ``model.tool_call_parser`` unless ``name`` is None or one of vLLM's parsers."""
    if name is None:
        return
    from vllm.tool_parsers import ToolParserManager

    known = ToolParserManager.list_registered()
    if name not in known:
        raise ValueError(
            f"model.tool_call_parser: {name!r} is not a vLLM tool-call parser; known: {', '.join(known)}"
        )


def check_architecture(architecture: str) -> None:
    """Raise ValueError unless vLLM has a model class for ``architecture`` (config.json's architectures[0])."""
    from vllm import ModelRegistry

    if architecture not in ModelRegistry.get_supported_archs():
        raise ValueError(f"vLLM {_vllm_version()} has no model class for architecture {architecture!r}")


def _vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def _bounded_ray_stat_logger() -> Any:
    """vLLM's engine metrics (running/waiting requests, KV-cache usage, TTFT, time per output token,
    preemptions, ...) through Ray's metrics, so the node's /metrics exports them tagged with the Serve
    ``ReplicaId``, replacing vLLM's own Prometheus registry (which Ray does not scrape). Without
    ``vllm:lora_requests_info``: its labels list the running adapters, one series per set of adapters
    (unbounded with thousands of compositions); ``rmn_engine_loras_resident`` counts them instead."""
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    class BoundedRayStatLogger(RayPrometheusStatLogger):
        def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
            super().__init__(vllm_config, engine_indexes)
            self.gauge_lora_info = None

    return BoundedRayStatLogger


def _worker_threads(vllm_config: Any) -> contextlib.AbstractContextManager[None]:
    """While the engine-core process is started: the OpenMP environment vLLM gives a CPU worker process
    (threads, binding to ``VLLM_CPU_OMP_THREADS_BIND``) when that process runs the worker itself ("uni"
    executor, ``engine.cpu_executor``); nothing to do otherwise (the "mp" executor sets it per worker)."""
    parallel = vllm_config.parallel_config
    if vllm_config.device_config.device_type != "cpu" or parallel.distributed_executor_backend != "uni":
        return contextlib.nullcontext()
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    return OMPProcessManager(vllm_config).configure_omp_envs(rank=0, local_rank=0)


class VLLMEngine:
    """One vLLM ``AsyncLLM`` with vLLM's OpenAI serving objects and runtime LoRA add/remove."""

    def __init__(self, model: ModelConfig, engine: EngineConfig) -> None:
        self.model_cfg = model
        self.engine_cfg = engine
        self._client: Any = None
        self._state: Any = None
        self._core_claims: list[Any] = []

    def _bind_cores(self) -> None:
        """Bind vLLM's CPU threads to cores of this replica's own (``engine.cpu_threads``, else the
        replica's CPUs), claimed against other replicas on the node; an explicit binding is kept."""
        if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "auto":
            return
        from serving.engines.cpu_threads import claim_cores

        n = self.engine_cfg.cpu_threads
        if n is None:
            import ray

            if ray.is_initialized():  # a Serve replica: its share of the node
                n = max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
            else:
                n = len(os.sched_getaffinity(0))
        cores, self._core_claims = claim_cores(n, Path(tempfile.gettempdir()) / "rmn-cpu-claims")
        if len(cores) == 1 and self.engine_cfg.cpu_executor == "uni":
            # one thread runs the scheduler and the model in turn: no barrier to keep its threads together,
            # and the OS places it beside the replica's other processes better than a fixed core does
            # (153-155 vs 139-149 tokens/s on 2 cores, docs/benchmarks.md); the claim still spreads replicas
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            os.environ["OMP_NUM_THREADS"] = "1"
            log.info("vLLM CPU thread: one, unbound (core %s claimed)", cores[0])
            return
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
        log.info("vLLM CPU threads bound to cores %s", cores)

    async def start(self) -> None:
        """Start the engine (seconds on CPU) and build vLLM's OpenAI handlers."""
        if self.engine_cfg.device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            self._bind_cores()
            # read by the LoRA plugin in every vLLM process this one starts (they inherit the environment)
            os.environ["RMN_CPU_LORA"] = self.engine_cfg.cpu_lora
            # read by vLLM's CPU platform: "1" turns a one-worker engine's "uni" executor into "mp"
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = (
                "0" if self.engine_cfg.cpu_executor == "uni" else "1"
            )
        # before vLLM's first import here: its logging setup would close Serve's log handlers (vllm_logging)
        from serving.engines.vllm_logging import install_vllm_handler, keep_host_handlers

        keep_host_handlers()
        if self.engine_cfg.compact_json:
            # forced tool calls (named, "required") through the JSON-schema path, which honours compact JSON;
            # vLLM's strict structural tags allow any whitespace, where small models loop until max_tokens
            os.environ.setdefault("VLLM_ENFORCE_STRICT_TOOL_CALLING", "0")
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        import serving.engines.lora_plugin as fix
        import serving.engines.tool_calls as tool_calls

        install_vllm_handler()
        fix.register()  # the entry point does this too; explicit for editable installs without metadata
        tool_calls.install()
        args = _vllm_args(self.model_cfg, self.engine_cfg)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        if (
            self.engine_cfg.gpu_bundles
        ):  # as Ray Serve LLM does: vLLM's ray executor uses the replica's bundles
            from ray.util import get_current_placement_group

            vllm_config.parallel_config.placement_group = get_current_placement_group()
        with _worker_threads(vllm_config):
            self._client = AsyncLLM.from_vllm_config(
                vllm_config=vllm_config,
                usage_context=UsageContext.OPENAI_API_SERVER,
                enable_log_requests=False,
                disable_log_stats=False,
                stat_loggers=[_bounded_ray_stat_logger()],
            )
        if self.engine_cfg.device == "cpu":  # probe the LoRA layers' arithmetic now, not in a first request
            try:
                await self._client.collective_rpc("rmn_cpu_lora_probe", timeout=600)
            except (
                Exception
            ) as e:  # e.g. engine.extra names another worker_extension_cls: probed on first use
                log.warning(
                    "CPU LoRA layers not probed at start (%s: %s); probed on first use", type(e).__name__, e
                )
        self._state = State()
        tasks = await self._client.get_supported_tasks()
        await init_app_state(self._client, self._state, args, tasks)
        log.info("vLLM engine ready: model=%s", self.model_cfg.path)

    # ---- adapters -------------------------------------------------------------------------
    def loaded_adapters(self) -> list[str]:
        """LoRA names currently registered with the engine."""
        return sorted(self._state.openai_serving_models.lora_requests)

    async def add_adapter(self, lora_name: str, path: str) -> None:
        """Load a PEFT adapter directory into the engine under ``lora_name`` (idempotent)."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        models = self._state.openai_serving_models
        if lora_name in models.lora_requests:
            return
        result = await models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=lora_name, lora_path=path))
        if isinstance(result, ErrorResponse):
            raise RuntimeError(f"loading adapter {lora_name!r} failed: {result.error.message}")

    async def remove_adapter(self, lora_name: str) -> None:
        """Forget ``lora_name`` and free its engine slot (no-op when absent)."""
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        models = self._state.openai_serving_models
        req = models.lora_requests.get(lora_name)
        if req is None:
            return
        await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=lora_name))
        await self._client.remove_lora(req.lora_int_id)

    # ---- requests -------------------------------------------------------------------------
    async def handle(self, kind: Kind, body: dict[str, Any]) -> AsyncIterator[EngineItem]:
        """Run one OpenAI request; see the module docstring for the item protocol."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.exceptions import VLLMClientError

        if self.engine_cfg.json_object == "bounded":
            body = bounded_json_object(body)
        try:
            if kind == "chat":
                req: Any = ChatCompletionRequest.model_validate(body)
                result = await self._state.openai_serving_chat.create_chat_completion(req, None)
            else:
                req = CompletionRequest.model_validate(body)
                result = await self._state.openai_serving_completion.create_completion(req, None)
        except ValidationError as e:
            loc, msg = first_error(e)
            for item in error_items(InvalidRequest(f"invalid request: {loc or None}: {msg}"), loc or None):
                yield item
            return
        except (VLLMClientError, ValueError, TypeError) as e:
            for item in error_items(InvalidRequest(str(e)), getattr(e, "parameter", None)):
                yield item
            return
        if isinstance(result, ErrorResponse):  # vLLM's own verdict, relayed with vLLM's status
            if (
                "--tool-call-parser" in result.error.message
            ):  # vLLM names its CLI flag; ours is a config field
                result.error.message += " (rmn-lora: set model.tool_call_parser in the config, e.g. 'hermes')"
            yield Head(result.error.code, False)
            yield Body(result.model_dump())
        elif hasattr(result, "model_dump"):
            yield Head(200, False)
            yield Body(result.model_dump(exclude_none=True))
        else:
            yield Head(200, True)
            async for chunk in result:
                yield chunk

    async def numerics(self) -> dict[str, Any]:
        """How LoRA is applied on this engine: on CPU the grouped wrapper's mode, the CPU and, per layer shape
        probed so far, the arithmetic that serves it (grouped or vllm), whether it gives vLLM's bits and whether
        its error against float64 is within the bound (:meth:`GroupedLoRA.report`)."""
        if self.engine_cfg.device != "cpu" or self._client is None:
            return {"device": self.engine_cfg.device, "cpu_lora": None}
        try:
            reports = await self._client.collective_rpc("rmn_cpu_lora_report", timeout=30)
        except Exception as e:  # another worker_extension_cls (engine.extra): no report, say why
            return {"device": "cpu", "cpu_lora": None, "error": f"{type(e).__name__}: {e}"}
        flat = [r for worker in reports for r in (worker or [])]
        return {"device": "cpu", "cpu_lora": flat[0] if len(flat) == 1 else flat or None}

    async def check_health(self) -> None:
        """Raise if the engine core died."""
        await self._client.check_health()

    def shutdown(self) -> None:
        """Stop the engine core process."""
        if self._client is not None:
            self._client.shutdown()
            self._client = None
