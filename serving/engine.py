"""The engine deployment: one engine (vLLM) per replica, adapters hot-swapped by multiplexed model id.

A request's multiplexed model id is a version-pinned stack ``<base>:<a>@<v>[+<b>@<v>[*w]...]`` — the
recipe itself, since Serve hands the loader nothing but the id. Ray Serve routes it to a replica that
already holds it (``serve.multiplexed`` affinity); the replica's loader resolves it through the adapter
registry ON ITS OWN NODE (a request never carries a path), composes a multi-adapter stack exactly into
its node-local composite cache, and loads the result into vLLM. Residency per replica is bounded by ``max_cpu_loras`` with LRU eviction; an
evicted adapter is removed from vLLM once its in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve

from adapters import AdapterError, AdapterNotFound, AdapterRegistry, InvalidAdapter, RegistryUnavailable
from adapters.cache import CompositeCache, resolve
from federation.errors import FederationError
from federation.model_names import ModelNameError, parse_model_name
from serving.adapter_api import check_targets, register_files
from serving.config import AppConfig
from serving.engines import EngineFactory, Kind, create_engine
from serving.engines.vllm_logging import records_held
from serving.errors import EngineFailed, error_items, error_reply
from serving.metrics import EngineMetrics
from serving.node import node_name
from serving.replies import EngineItem, Head, Reply

log = logging.getLogger("ray.serve")


class _Resident:
    """What the multiplexed loader caches: a loaded adapter; Ray calls ``__del__`` when evicting it."""

    def __init__(self, lora_name: str, on_evict: Callable[[str], None]) -> None:
        self.lora_name = lora_name
        self._on_evict: Callable[[str], None] | None = on_evict

    def __del__(self) -> None:
        cb, self._on_evict = self._on_evict, None
        if cb is not None:
            cb(self.lora_name)


class _NoSeries:
    """Stands in for Serve's per-model-id gauge ``serve_registered_multiplexed_model_id``: with content-addressed
    composite ids it would keep a series for every composite ever loaded (Ray has no call to drop one), in the
    replica's memory and in Prometheus. ``rmn_engine_loras_resident`` counts what is resident instead."""

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        """Record nothing."""


def _unlabel_multiplexing(load_fn: Any) -> None:
    """Swap the per-model-id gauge of Serve's multiplexing wrapper (set on ``load_fn`` on its first call) for
    :class:`_NoSeries` (once)."""
    wrapper = getattr(load_fn, "__serve_multiplex_wrapper", None)
    if wrapper is not None and not isinstance(getattr(wrapper, "registered_model_gauge", None), _NoSeries):
        wrapper.registered_model_gauge = _NoSeries()


def lora_targets(setting: list[str] | str | None, registry: AdapterRegistry) -> set[str] | None:
    """The modules an engine replica applies LoRA to (``engine.lora_target_modules``): the list given; for
    ``registry`` the union of what every registered adapter version targets, read now (None — every supported
    module — while the registry is empty, or unreadable: logged); None: every supported module."""
    if setting != "registry":
        return None if setting is None else set(setting)
    try:
        modules = {
            t
            for a in registry.ids()
            for v in registry.versions(a)
            for t in registry.manifest(a, v).target_modules
        }
    except Exception as e:  # the store away at start: serve every module rather than refuse adapters
        log.warning("lora_target_modules: registry unreadable at start (%r): every supported module", e)
        return None
    if not modules:
        log.info("lora_target_modules: the registry holds no adapter yet: every supported module")
        return None
    log.info("lora_target_modules from the registry: %s", sorted(modules))
    return modules


def rank_advice(registry: AdapterRegistry, max_rank: int) -> str | None:
    """A warning when ``max_rank`` (``engine.max_lora_rank``) is above the smallest of vLLM's ranks that covers
    the largest stack the registry's live adapters make (the highest rank of each kind, summed: one adapter per
    layer); every slot is padded to ``max_rank``, which costs on a GPU. None when it fits, or nothing is known."""
    from serving.engines.config import LORA_RANKS

    try:
        best: dict[str, int] = {}
        for m in registry.list():
            best[m.kind.value] = max(best.get(m.kind.value, 0), m.rank)
    except Exception:  # advice only
        return None
    largest = sum(best.values())
    if not largest:
        return None
    bucket = next((r for r in LORA_RANKS if r >= largest), LORA_RANKS[-1])
    if bucket >= max_rank:
        return None
    return (
        f"engine.max_lora_rank is {max_rank} but the largest stack of the registry's adapters (one per layer) has "
        f"rank {largest}: {bucket} would cover it, and every adapter slot is padded to max_lora_rank"
    )


class EngineDeployment:
    """Ray Serve deployment class (bound by :func:`serving.app.build_app`); the engine is vLLM's, or the one
    ``engine_cls`` makes (the FakeEngine of the Serve test tier)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, config: AppConfig, engine_cls: EngineFactory | None = None
    ) -> None:
        self._cfg = config
        self._metrics = EngineMetrics()
        node = node_name()
        self._registry = config.adapters.registry(config.engine.max_lora_rank, node)
        self._cache = CompositeCache(
            config.adapters.cache_dir(node),
            self._registry,
            max_bytes=config.adapters.cache_max_bytes,
            max_rank=config.engine.max_lora_rank,
            compress=config.adapters.compress_overflow,
            on_event=self._on_cache_event,
            # in the engine's dtype: the bits vLLM loads are the same, the files half the size ("auto": float32)
            dtype=config.engine.dtype if config.engine.dtype in ("bfloat16", "float16") else None,
        )
        advice = await asyncio.to_thread(rank_advice, self._registry, config.engine.max_lora_rank)
        if advice:
            log.warning(advice)
        self._targets = await asyncio.to_thread(
            lora_targets, config.engine.lora_target_modules, self._registry
        )
        engine_cfg = config.engine.model_copy(
            update={"lora_target_modules": None if self._targets is None else sorted(self._targets)}
        )
        self._engine = create_engine(config.model, engine_cfg, engine_cls)
        await self._engine.start()
        self._loop = asyncio.get_running_loop()
        self._inflight: collections.Counter[str] = collections.Counter()
        self._loads = 0
        self._evictions = 0
        try:
            self._replica = serve.get_replica_context().replica_id.unique_id
            self._app = serve.get_replica_context().app_name
        except Exception:  # constructed outside Serve (unit use)
            self._replica, self._app = "local", ""

        async def load(lora_name: str) -> _Resident:  # a plain function: Serve sets attributes on it
            return await self._load_adapter(lora_name)

        self._load_fn = load
        self._load = serve.multiplexed(max_num_models_per_replica=config.engine.max_cpu_loras)(load)
        self._numerics = await self._engine.numerics()  # the layers vLLM's profile run probed
        self._metrics.record_numerics(self._numerics)

    async def _load_adapter(self, lora_name: str) -> _Resident:
        _unlabel_multiplexing(self._load_fn)
        ref = parse_model_name(lora_name, self._cfg.model.served_name)
        if ref.is_base or any(p.version is None for p in ref.parts):
            raise ModelNameError(f"multiplexed model id {lora_name!r} is not a version-pinned stack")
        if self._targets is not None:  # refused here, with the reason, rather than failing inside vLLM
            modules = await asyncio.to_thread(
                lambda: {
                    t for p in ref.parts for t in self._registry.manifest(p.id, str(p.version)).target_modules
                }
            )
            check_targets(modules, self._targets)
        if len(ref.parts) == 1 and ref.parts[0].weight == 1.0:
            path = await asyncio.to_thread(self._registry.files, ref.parts[0].id, str(ref.parts[0].version))
        else:  # compose on THIS node from the registry (cache hit is the normal case)
            path = await asyncio.to_thread(
                lambda: self._cache.get_or_build(resolve(self._registry, ref.parts, live_only=False))
            )
        await self._engine.add_adapter(lora_name, str(path))
        self._loads += 1
        self._metrics.loads.inc()
        self._metrics.resident.set(len(self._engine.loaded_adapters()))
        log.info("adapter loaded", extra={"lora_name": lora_name, "replica": self._replica})
        return _Resident(lora_name, self._schedule_evict)

    def _on_cache_event(self, event: str, seconds: float) -> None:
        if event == "build":
            self._metrics.cache_misses.inc()
            self._metrics.build_seconds.observe(seconds)
        else:
            self._metrics.cache_hits.inc()

    def _schedule_evict(self, lora_name: str) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._evict(lora_name)))

    async def _evict(self, lora_name: str) -> None:
        while self._inflight[lora_name] > 0:
            await asyncio.sleep(0.05)
        await self._engine.remove_adapter(lora_name)
        self._evictions += 1
        self._metrics.evictions.inc()
        self._metrics.resident.set(len(self._engine.loaded_adapters()))
        log.info("adapter evicted", extra={"lora_name": lora_name, "replica": self._replica})

    async def generate(self, kind: Kind, body: dict[str, Any]) -> AsyncIterator[EngineItem]:
        """Serve one OpenAI request: the engine protocol's items, the :class:`Head` stamped with this
        replica and the adapter that served it (the multiplexed model id; '' for the base model)."""
        lora_name = serve.get_multiplexed_model_id()
        entered = time.monotonic()
        load_s = 0.0
        if lora_name:
            failure: list[EngineItem] = []
            started = entered
            try:
                await self._load(lora_name)
            except (AdapterNotFound, InvalidAdapter, FederationError, RegistryUnavailable) as e:
                failure = error_items(e)  # a verdict on the request, or a store that is away for now
            except (AdapterError, RuntimeError) as e:
                failure = error_items(EngineFailed(f"adapter {lora_name!r} could not be loaded: {e}"))
            load_s = time.monotonic() - started
            if failure:
                for item in failure:
                    if isinstance(item, Head):
                        item = item.at(self._replica, lora_name, load_s, time.monotonic() - entered)
                    yield item
                return
            body = {**body, "model": lora_name}
        self._inflight[lora_name] += 1
        try:
            async for item in self._engine.handle(kind, body):
                if isinstance(item, Head):
                    item = item.at(self._replica, lora_name or None, load_s, time.monotonic() - entered)
                yield item
        finally:
            self._inflight[lora_name] -= 1
            if self._inflight[lora_name] <= 0:
                del self._inflight[lora_name]  # bounded: one entry per composition in flight, not ever seen

    async def register_adapter(self, files: dict[str, bytes], fields: dict[str, Any]) -> Reply:
        """Register an uploaded adapter (``POST /v1/adapters``) checked against this replica's base model:
        201 + manifest, or the refusal (:class:`InvalidAdapter`; :class:`AdapterExists` when the version was
        taken meanwhile). Nothing is written on a refusal."""
        try:
            m = await asyncio.to_thread(
                register_files, self._registry, self._cfg.model.path, files, fields, self._targets
            )
        except InvalidAdapter as e:
            return error_reply(e, context="adapter refused: ")
        except RegistryUnavailable as e:
            return error_reply(e, context="adapter not registered: ")
        except Exception as e:  # a check that broke, not a verdict: nothing was published (atomic rename)
            log.exception("adapter registration failed")
            return error_reply(EngineFailed(f"adapter registration failed on the engine replica: {e}"))
        log.info("adapter registered", extra={"lora_name": f"{m.id}@{m.version}", "replica": self._replica})
        return Reply(201, m.model_dump(mode="json"))

    async def numerics(self) -> dict[str, Any]:
        """The engine's LoRA arithmetic and its verdicts (layers are probed on first use: asked anew)."""
        self._numerics = await self._engine.numerics()
        self._metrics.record_numerics(self._numerics)
        return {"replica": self._replica, **self._numerics}

    async def stats(self) -> dict[str, Any]:
        """Replica id (and Ray actor name), adapters resident in vLLM, loads and evictions so far, log records
        held by the process's buffering log handlers (bounded: serving.engines.vllm_logging), the LoRA
        arithmetic's verdicts as of the last :meth:`numerics`."""
        import ray

        return {
            "numerics": self._numerics,
            "replica": self._replica,
            "actor": ray.get_runtime_context().get_actor_name(),
            "adapters": self._engine.loaded_adapters(),
            "loads": self._loads,
            "evictions": self._evictions,
            "log_records_held": records_held(),
            "composite_cache": {
                "hits": self._cache.stats.hits,
                "misses": self._cache.stats.misses,
                "build_seconds": list(self._cache.stats.build_seconds)[-20:],
                "locks": self._cache.lock_count,
                "inflight_keys": len(self._inflight),
            },
        }

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metric, read by :func:`serving.autoscaling.engine_policy`: the requests
        waiting in the routers' queues (the app's board; 0 without one)."""
        from serving.autoscaling import BACKLOG_METRIC
        from serving.cluster_board import board_backlog

        return {BACKLOG_METRIC: float(await board_backlog(self._app)) if self._app else 0.0}

    async def check_health(self) -> None:
        """Ray Serve health check: raises when the engine core is dead (Serve then replaces the replica)."""
        await self._engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
