"""The engine deployment's Serve options when one engine spans GPUs (serving/gpu_placement.py): a bundle per GPU
worker with the replica's own resources in the first, the replica actor asking for no GPU itself, the strategy
from the config, vLLM told to use Ray workers; unchanged on CPU, for one GPU and with ``gpu_placement: actor``."""

from __future__ import annotations

from typing import Any

from serving.config import AppConfig
from serving.engines.vllm_engine import _vllm_args
from serving.gpu_placement import engine_serve_options


def config(engine: dict[str, Any], deployment: dict[str, Any]) -> AppConfig:
    return AppConfig.model_validate(
        {
            "model": {"path": "/m"},
            "adapters": {"root": "/r"},
            "engine": engine,
            "engine_deployment": deployment,
        }
    )


def test_tensor_parallel_workers_get_a_bundle_each_and_the_replica_rides_in_the_first() -> None:
    cfg = config(
        {"device": "cuda", "placement_strategy": "STRICT_PACK", "extra": {"tensor_parallel_size": 4}},
        {"num_gpus": 4, "num_cpus": 2, "resources": {"accelerator_type:H100": 0.01}},
    )
    opts = engine_serve_options(cfg)
    assert opts["placement_group_bundles"] == [
        {"CPU": 2.0, "GPU": 1.0, "accelerator_type:H100": 0.01},
        {"GPU": 1.0},
        {"GPU": 1.0},
        {"GPU": 1.0},
    ]
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    actor = opts["ray_actor_options"]
    assert actor["num_gpus"] == 0 and actor["num_cpus"] == 2  # fits the first bundle
    assert _vllm_args(cfg.model, cfg.engine).distributed_executor_backend == "ray"


def test_one_gpu_the_actor_mode_and_cpu_keep_the_deployments_own_options() -> None:
    for cfg in (
        config({"device": "cuda"}, {"num_gpus": 1}),
        config(
            {"device": "cuda", "gpu_placement": "actor", "extra": {"tensor_parallel_size": 2}},
            {"num_gpus": 2},
        ),
        config({}, {}),
    ):
        opts = engine_serve_options(cfg)
        assert "placement_group_bundles" not in opts
        assert opts == cfg.engine_deployment.serve_options()
    actor = config(
        {"device": "cuda", "gpu_placement": "actor", "extra": {"tensor_parallel_size": 2}}, {"num_gpus": 2}
    )
    assert engine_serve_options(actor)["ray_actor_options"]["num_gpus"] == 2
