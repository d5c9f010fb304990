"""A user's own model, not Llama: a sharded Qwen2 checkpoint registered with ``rmn model register``, adapters
validated against its own weight names, and a composed stack served through ``/v1/chat/completions`` by
real vLLM (fp32) with the greedy answer equal to transformers + PEFT on the merged composite."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "plan a coffee campaign for the spring"}]
TOKENS = 10
# two adapters on different modules and ranks: the stack covers attention (q/k/v/o, with Qwen2's biases
# untouched) and the MLP
ADAPTERS = {
    "qw_attn": (["q_proj", "k_proj", "v_proj", "o_proj"], 4, 1.0),
    "qw_mlp": (["gate_proj", "down_proj"], 6, 0.5),
}


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from adapters import AdapterRegistry
    from adapters.synthetic import make_random_adapter
    from serving.cli.main import main
    from serving.modelprep.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("own-model")
    model = build_tiny_model(root / "qwen2", seed=5, architecture="qwen2", max_shard_size="1500KB")
    assert len(list(model.glob("model-*-of-*.safetensors"))) == 4
    assert main(["model", "register", str(model)]) == 0
    registry = AdapterRegistry(root / "registry", max_rank=16)
    dirs = {}
    for i, (name, (modules, rank, _)) in enumerate(ADAPTERS.items()):
        dirs[name] = make_random_adapter(
            model, root / name, seed=20 + i, rank=rank, target_modules=modules, scale=0.15
        )
        registry.register(
            dirs[name], base_model_dir=model, base_model="qwen2", id=name, kind="retailer", owner=name
        )
    return {"model": model, "registry": root / "registry", "dirs": dirs, "root": root}


@pytest.fixture(scope="module")
def qwen2_url(qwen2: dict[str, Any], ray_serve: None) -> Iterator[str]:
    from ray import serve

    from serving.app import build_app
    from serving.config import AppConfig
    from tests.conftest import METRICS_PORT, SERVE_PORT

    cfg = AppConfig.model_validate(
        {
            "model": {"path": str(qwen2["model"])},
            "adapters": {"root": str(qwen2["registry"]), "cache_root": str(qwen2["root"] / "composites")},
            "engine": {
                "dtype": "float32",
                "max_loras": 2,
                "max_cpu_loras": 2,
                "max_lora_rank": 16,
                "max_model_len": 256,
            },
            "engine_deployment": {
                "num_replicas": 1,
                "num_cpus": 0.5,
                "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
            },
            "router_deployment": {"num_cpus": 0.05},
            "http": {"port": SERVE_PORT, "metrics_port": METRICS_PORT, "request_timeout_s": 60},
        }
    )
    serve.run(build_app(cfg), name="rmn-qwen2", route_prefix="/qwen2")
    try:
        yield f"http://127.0.0.1:{SERVE_PORT}/qwen2"
    finally:
        with contextlib.suppress(Exception):
            serve.delete("rmn-qwen2", _blocking=True)


def reference(model_dir: Path, adapter: Path | None, tmp: Path) -> str:
    """Greedy answer of transformers (fp32) with the composite's delta merged into the weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok.apply_chat_template(MSG, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=TOKENS, do_sample=False)[0, ids.shape[1] :]
    return str(tok.decode(out, skip_special_tokens=True))


def test_a_sharded_qwen2_serves_a_composed_stack_equal_to_the_merged_reference(
    qwen2: dict[str, Any], qwen2_url: str, tmp_path: Path
) -> None:
    from adapters.compose import Component, compose_to_dir

    stack = "+".join(name if w == 1.0 else f"{name}*{w}" for name, (_, _, w) in ADAPTERS.items())
    answers = {}
    for model in ("base", f"base:{stack}"):
        r = httpx.post(
            f"{qwen2_url}/v1/chat/completions",
            json={"model": model, "messages": MSG, "max_tokens": TOKENS, "temperature": 0},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        answers[model] = r.json()["choices"][0]["message"]["content"]
    assert r.headers["x-rmn-model"] == "base:qw_attn@1+qw_mlp@1*0.5"
    composite = tmp_path / "composite"
    compose_to_dir([Component(qwen2["dirs"][n], w) for n, (_, _, w) in ADAPTERS.items()], composite)
    assert answers[f"base:{stack}"] == reference(qwen2["model"], composite, tmp_path)
    assert answers["base"] == reference(qwen2["model"], None, tmp_path)
    assert answers["base"] != answers[f"base:{stack}"]  # the stack changes the answer
