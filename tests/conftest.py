"""Shared fixtures: one tiny model, random adapters, one in-process vLLM engine and one Ray Serve app
per test session (they are expensive: seconds each)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ADAPTERS = {"alpha": 1, "beta": 2, "gamma": 3}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/serve/ are the Serve tier (marker ``serve``), under tests/gateway/ the gateway tier."""
    for item in items:
        for tier in ("serve", "gateway"):
            if f"tests/{tier}/" in item.nodeid or f"/tests/{tier}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    """One S3-compatible server (moto, loopback, own process) for the session; tests make their buckets."""
    from tests.s3 import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serving.modelprep.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random PEFT adapters (unregistered), by name; 'delta' is kept for runtime registration."""
    from adapters.synthetic import make_random_adapter

    root = tmp_path_factory.mktemp("adapter-src")
    from tests.tenants import FED_ADAPTERS

    seeds = {**ADAPTERS, "delta": 4}
    dirs = {name: make_random_adapter(tiny_model, root / name, seed=seed) for name, seed in seeds.items()}
    for i, name in enumerate(FED_ADAPTERS):
        dirs[name] = make_random_adapter(tiny_model, root / name, seed=50 + i, rank=4, alpha=8, scale=0.1)
    return dirs


def populate(reg: Any, adapter_dirs: dict[str, Path]) -> None:
    """Register the session's adapters: the federation's (tests/tenants.py) and alpha/beta/gamma."""
    from tests.tenants import FED_ADAPTERS

    for name, (kind, owner, visibility) in FED_ADAPTERS.items():
        reg.register(
            adapter_dirs[name],
            id=name,
            kind=kind,
            owner=owner,
            visibility=visibility,
            base_model="tiny",
            base_model_revision="test",
        )
    for name in ADAPTERS:
        reg.register(
            adapter_dirs[name],
            id=name,
            kind="retailer",
            owner=name,
            base_model="tiny",
            base_model_revision="test",
        )


@pytest.fixture(scope="session")
def registry_root(adapter_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory registry of the real-engine app (and of the Serve tier's ``dir`` run)."""
    from adapters import AdapterRegistry

    root = tmp_path_factory.mktemp("registry")
    populate(AdapterRegistry(root, max_rank=16), adapter_dirs)
    return root


@pytest.fixture(scope="session", params=["dir", "s3"])
def fake_registry(
    request: pytest.FixtureRequest, registry_root: Path, adapter_dirs: dict[str, Path]
) -> dict[str, Any]:
    """The Serve tier's registry, parametrised: the directory, and a bucket on a real S3-compatible server
    (moto on loopback). ``adapters`` is the config section; ``registry`` a test-side handle on it."""
    from adapters import AdapterRegistry
    from adapters.store import open_store

    if request.param == "dir":
        return {
            "adapters": {"root": str(registry_root)},
            "registry": AdapterRegistry(registry_root, max_rank=16),
        }
    s3 = request.getfixturevalue("s3")
    url = s3.make_bucket("rmn-serve-tier") + "/adapters"
    cache = request.getfixturevalue("tmp_path_factory").mktemp("s3-test-side-cache")
    store = open_store(url, cache_root=cache, options=s3.options())
    reg = AdapterRegistry(url, max_rank=16, store=store, metadata_ttl_s=0)
    populate(reg, adapter_dirs)
    # one second: the tests see other replicas' changes quickly (the default for object stores is 2 s)
    section = {"root": url, "storage_options": s3.options(), "metadata_ttl_s": 1.0}
    return {"adapters": section, "registry": reg}


@pytest.fixture(scope="session")
def make_llm(tiny_model: Path) -> Iterator[Callable[..., Any]]:
    """Factory of in-process vLLM ``LLM`` engines (no engine subprocess; the 2nd one starts in ~0.2 s)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    def make(
        dtype: str = "bfloat16", max_loras: int = 2, kv_bytes: int = 256 << 20, max_model_len: int = 512
    ) -> Any:
        from vllm import LLM

        return LLM(
            model=str(tiny_model),
            dtype=dtype,
            enable_lora=True,
            max_loras=max_loras,
            max_lora_rank=16,
            kv_cache_memory_bytes=kv_bytes,
            max_model_len=max_model_len,
            seed=0,
            enforce_eager=True,
        )

    yield make
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)


@pytest.fixture(scope="session")
def llm(make_llm: Callable[..., Any]) -> Any:
    """One in-process bf16 engine with LoRA enabled, 2 slots, shared by the session."""
    return make_llm()


def make_app_config(
    tiny_model: Path,
    registry_root: Path | str,
    tmp: pytest.TempPathFactory,
    engine: str = "vllm",
    adapters: dict[str, Any] | None = None,
) -> Any:
    """The test app's config; ``engine`` "fake" gives the fast Serve tier's app (FakeEngine, light
    replicas, a 3 s deadline, its own clean-room files: DuckDB allows one writer per file). ``adapters``:
    more of the config's adapters section (an object-store registry)."""
    from cleanroom import CleanRoom, CleanRoomPolicy
    from serving.config import AppConfig
    from tests.cleanroom_data import write_events
    from tests.tenants import tenants_config

    fake = engine == "fake"
    crdir = tmp.mktemp(f"cleanroom-{engine}")
    events = write_events(crdir / "events.csv", 3)
    dp_policy = {
        "retailer": "shopco",
        "k": 3,
        "queries_per_minute": 4,
        "unscoped_tenants": ["brand_x", "brand_y"],
        "dp": {"epsilon_per_query": 1.0, "max_epsilon_per_query": 2.0, "epsilon_budget": 2.5},
    }
    acme_policy = {  # exact answers for the trusted test tenants; load tests compare through it
        "retailer": "acme",
        "k": 3,
        "queries_per_minute": 100000,
        "mode": "exact",
        "trusted_tenants": ["brand_x", "brand_y", "agency", "admin"],
        "report_suppressed_cells": True,
        # the test events are all brand "brewmax": brand_x and the agency may see them, brand_y may not
        "brand_owners": {"brand_x": ["brand_x", "brewmax"], "agency": ["brewmax"]},
        "benchmark": {"dimensions": ["category"], "k_factor": 1},
    }
    for name, policy in (("acme", acme_policy), ("shopco", dp_policy)):
        room = CleanRoom(crdir / f"{name}.duckdb", CleanRoomPolicy.model_validate(policy))
        room.load(events)
        room.close()  # the clean-room replica opens the file

    engine_cfg: dict[str, Any] = {
        "max_loras": 2,
        "max_cpu_loras": 4,
        "max_lora_rank": 16,
        "max_model_len": 1024,  # tool schemas in the prompt: the tiny tokenizer spends a token per 2-3 characters
    }
    return AppConfig.model_validate(
        {
            # the tools template renders plain ChatML without tools: the tiny model's own template
            "model": {"path": str(tiny_model), "chat_template": "chatml-tools", "tool_call_parser": "hermes"},
            "adapters": {
                "root": str(registry_root),
                "cache_root": str(tmp.mktemp(f"composites-{engine}")),
                "max_upload_bytes": 4 << 20,  # the test adapters are tens of KB; 413 is tested
                **(adapters or {}),
            },
            "engine": engine_cfg,
            "engine_deployment": {
                "num_replicas": 2,
                "num_cpus": 0.05 if fake else 0.5,
                "max_ongoing_requests": 4,
                "max_queued_requests": 64,  # the router's fair queue is the queue; this only absorbs lost capacity
                "graceful_shutdown_timeout_s": 5,
                "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
            },
            "router_deployment": {
                "num_cpus": 0.05 if fake else 0.1,
                "max_ongoing_requests": 256,
                "max_queued_requests": 256,
                "env": {
                    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"
                },  # autoscaling reacts in s
            },
            "http": {
                "port": SERVE_PORT,
                "request_timeout_s": 3 if fake else 60,
                "metrics_port": METRICS_PORT,
            },
            # a 3 s deadline on a 2-core machine that also runs the load: queue at most 0.9 s
            "admission": {"max_wait_share": 0.3},
            "cleanroom": {
                "retailers": [
                    {"db_path": str(crdir / "acme.duckdb"), "policy": acme_policy},
                    {"db_path": str(crdir / "shopco.duckdb"), "policy": dp_policy},
                ],
                "deployment": {"num_cpus": 0.05},
            },
            "comparison": {
                "market": {
                    "seed": 3,
                    "brands": ["brand_x", "brand_y"],
                    "skus_per_brand": 6,
                    "days": 28,
                    "shoppers": 600,
                    "horizon_days": 14,
                },
                "planner_deployment": {"num_replicas": 2, "num_cpus": 0.05},
                "comparison_deployment": {  # autoscaled quickly: tests/integration/test_observability.py
                    "num_cpus": 0.05,
                    "autoscaling": {
                        "min_replicas": 1,
                        "max_replicas": 2,
                        "target_ongoing_requests": 1,
                        "upscale_delay_s": 1,
                        "downscale_delay_s": 5,
                        "look_back_period_s": 2,
                    },
                    "env": {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"},
                },
                "rationale_max_tokens": 200,
                "creative_max_tokens": 12,
            },
            "federation": {
                "tenants": tenants_config(),
                "policy": {"industry_adapter": "rm"},
                "audit_log": str(tmp.mktemp(f"audit-{engine}") / "decisions.jsonl"),
            },
        }
    )


# One Ray cluster and one Serve HTTP proxy per test session; both apps share them (ports fixed per session).
SERVE_PORT = free_port()
METRICS_PORT = free_port()
APPS = {"vllm": ("rmn", "/"), "fake": ("rmn-fake", "/fake")}  # engine -> (Serve app name, route prefix)


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[None]:
    """A Ray cluster owned by this test session with Serve's proxy on SERVE_PORT (shut down at the end,
    nothing else: `ray stop` would stop every cluster on the machine)."""
    import logging

    import ray
    from ray import serve

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=4,
        _metrics_export_port=METRICS_PORT,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT, "request_timeout_s": 120})
    try:
        yield
    finally:
        for name, _ in APPS.values():
            with contextlib.suppress(Exception):
                serve.delete(name, _blocking=True)
        serve.shutdown()
        ray.shutdown()


FAKE_TOKEN_DELAY_S = 0.01  # the Serve tier's FakeEngine: 10 ms a word


def fake_engine(token_delay_s: float = FAKE_TOKEN_DELAY_S) -> Any:
    """The FakeEngine as the engine class the app's engine replicas make (``build_app(..., engine_cls)``)."""
    import functools

    from serving.engines.fake import FakeEngine

    return functools.partial(FakeEngine, token_delay_s=token_delay_s)


def run_app(config: Any, engine: str) -> str:
    """Deploy the app of ``config`` as the session's ``engine`` app; its base URL."""
    from ray import serve

    from serving.app import build_app

    name, prefix = APPS[engine]
    serve.run(build_app(config, fake_engine() if engine == "fake" else None), name=name, route_prefix=prefix)
    return f"http://127.0.0.1:{SERVE_PORT}{prefix.rstrip('/')}"


@pytest.fixture(scope="session")
def app_config(tiny_model: Path, registry_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Config of the session's real-engine app (vLLM on CPU, tiny model)."""
    return make_app_config(tiny_model, registry_root, tmp_path_factory)


@pytest.fixture(scope="session")
def serve_url(app_config: Any, ray_serve: None) -> str:
    """The real-engine app (tests/integration; the serve tier overrides this with the fake app)."""
    return run_app(app_config, "vllm")


@pytest.fixture(scope="session")
def fake_config(
    tiny_model: Path, fake_registry: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """Config of the session's FakeEngine app (the fast Serve tier), on the parametrised registry."""
    section = fake_registry["adapters"]
    return make_app_config(tiny_model, section["root"], tmp_path_factory, engine="fake", adapters=section)


@pytest.fixture(scope="session")
def fake_url(fake_config: Any, ray_serve: None) -> Iterator[str]:
    """The FakeEngine app, beside the real one on the same proxy (route prefix /fake); deleted when the
    Serve tier moves on to the next registry."""
    from ray import serve

    yield run_app(fake_config, "fake")
    with contextlib.suppress(Exception):
        serve.delete(APPS["fake"][0], _blocking=True)
