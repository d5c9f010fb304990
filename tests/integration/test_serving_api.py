"""The app on real Ray Serve + real vLLM (tiny model): what only a real engine shows — adapters change
the text, SSE from vLLM, hot-swapped versions, LoRA residency, exact stacks served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.replicas import engine_stats
from tests.tenants import ADMIN, ADMIN_KEY

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "plan a coffee campaign"}]


def chat(url: str, model: str, **kw: object) -> httpx.Response:
    body = {"model": model, "messages": MSG, "max_tokens": 8, "temperature": 0, **kw}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60, headers=ADMIN)


def test_each_adapter_changes_the_output(serve_url: str) -> None:
    answers = {}
    for model in ["base", "base:alpha", "base:beta", "base:gamma"]:
        r = chat(serve_url, model)
        assert r.status_code == 200, r.text
        assert r.headers["x-rmn-model"] == (model if model == "base" else f"{model}@1")
        assert r.headers["x-request-id"]
        answers[model] = r.json()["choices"][0]["message"]["content"]
    assert len(set(answers.values())) == 4, answers
    # greedy decoding is deterministic: the same adapter answers the same
    assert chat(serve_url, "base:alpha").json()["choices"][0]["message"]["content"] == answers["base:alpha"]


def test_openai_client_models_chat_and_stream(serve_url: str) -> None:
    client = openai.OpenAI(base_url=f"{serve_url}/v1", api_key=ADMIN_KEY, max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert {"base", "base:alpha", "base:beta", "base:gamma"} <= ids
    resp = client.chat.completions.create(model="base:beta", messages=MSG, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert resp.model == "base:beta@1" and resp.usage is not None and resp.usage.completion_tokens == 6
    stream = client.chat.completions.create(
        model="base:beta", messages=MSG, max_tokens=6, temperature=0, stream=True
    )  # type: ignore[arg-type]
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text == resp.choices[0].message.content


def test_completions_stream_and_non_stream(serve_url: str) -> None:
    body = {"model": "base:gamma", "prompt": "coffee ads", "max_tokens": 5, "temperature": 0}
    full = httpx.post(f"{serve_url}/v1/completions", json=body, timeout=60, headers=ADMIN).json()["choices"][
        0
    ]["text"]
    with httpx.stream(
        "POST", f"{serve_url}/v1/completions", json={**body, "stream": True}, timeout=60, headers=ADMIN
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    assert "".join(json.loads(x)["choices"][0]["text"] for x in lines[:-1]) == full


def test_adapter_registered_at_runtime_is_served_without_restart(
    serve_url: str, registry_root: Path, adapter_dirs: dict[str, Path]
) -> None:
    from adapters import AdapterRegistry

    assert chat(serve_url, "base:delta").status_code == 404
    reg = AdapterRegistry(registry_root, max_rank=16)
    reg.register(
        adapter_dirs["delta"],
        id="delta",
        kind="manufacturer",
        owner="d",
        base_model="tiny",
        base_model_revision="test",
    )
    r = chat(serve_url, "base:delta")
    assert r.status_code == 200 and r.headers["x-rmn-model"] == "base:delta@1"
    assert "base:delta" in {
        m["id"] for m in httpx.get(f"{serve_url}/v1/models", headers=ADMIN).json()["data"]
    }
    # a new version is hot-swapped in: the same name now serves v2 (different weights, different text)
    v1_text = r.json()["choices"][0]["message"]["content"]
    reg.register(
        adapter_dirs["alpha"],
        id="delta",
        version="2",
        kind="manufacturer",
        owner="d",
        base_model="tiny",
        base_model_revision="test",
    )
    r2 = chat(serve_url, "base:delta")
    assert r2.headers["x-rmn-model"] == "base:delta@2"
    assert r2.json()["choices"][0]["message"]["content"] != v1_text
    assert chat(serve_url, "base:delta@1").json()["choices"][0]["message"]["content"] == v1_text


def test_residency_is_bounded_with_lru_eviction(
    serve_url: str, registry_root: Path, adapter_dirs: dict[str, Path]
) -> None:
    """12 adapters, more than 2 replicas x max_cpu_loras=4 hold: all served, residency stays <= 4."""
    from adapters import AdapterRegistry

    reg = AdapterRegistry(registry_root, max_rank=16)
    names = [f"lru{i}" for i in range(12)]
    for i, name in enumerate(names):
        reg.register(
            adapter_dirs[list(adapter_dirs)[i % 4]],
            id=name,
            kind="task",
            owner="t",
            base_model="tiny",
            base_model_revision="test",
        )
    for _ in range(2):
        for name in names:
            r = chat(serve_url, f"base:{name}", max_tokens=1)
            assert r.status_code == 200 and r.headers["x-rmn-model"] == f"base:{name}@1"
    stats = engine_stats("rmn", 20)
    assert stats
    for s in stats.values():
        assert len(s["adapters"]) <= 4, s
        # each replica says how LoRA is applied: its CPU and, per layer shape probed at start, which path
        cpu_lora = s["numerics"]["cpu_lora"]
        assert cpu_lora["mode"] == "grouped" and cpu_lora["machine"]["cpu"], s["numerics"]
        assert len(cpu_lora["layers"]) >= 4 and cpu_lora["error_bound"] == 2.0
        assert all(layer["arithmetic"] in ("compact", "grouped", "vllm") for layer in cpu_lora["layers"])
        assert all({"identical", "bounded", "compact_bounded"} <= set(layer) for layer in cpu_lora["layers"])
    assert sum(s["evictions"] for s in stats.values()) > 0, stats
    # 24+ requests served: Serve's replica log buffers at most its capacity (1), not a record per request — vLLM's
    # logging setup used to close that handler, which then kept every record (serving/engines/vllm_logging.py)
    assert all(s["log_records_held"] <= 1 for s in stats.values()), stats


def test_stack_is_composed_and_served(serve_url: str) -> None:
    alone = {
        m: chat(serve_url, f"base:{m}").json()["choices"][0]["message"]["content"] for m in ("alpha", "beta")
    }
    r = chat(serve_url, "base:alpha+beta*0.5")
    assert r.status_code == 200, r.text
    assert r.headers["x-rmn-model"] == "base:alpha@1+beta@1*0.5"
    assert r.headers["x-rmn-composite"].startswith("c") and len(r.headers["x-rmn-composite"]) == 25
    text = r.json()["choices"][0]["message"]["content"]
    assert text not in alone.values()
    again = chat(serve_url, "base:alpha@1+beta*0.5")
    assert again.headers["x-rmn-composite"] == r.headers["x-rmn-composite"]
    assert again.json()["choices"][0]["message"]["content"] == text
    order = chat(serve_url, "base:beta*0.5+alpha")  # a stack is a sum: written in another order, the same one
    assert order.headers["x-rmn-composite"] == r.headers["x-rmn-composite"]
    assert order.headers["x-rmn-model"] == "base:alpha@1+beta@1*0.5"
    assert order.json()["choices"][0]["message"]["content"] == text


def test_vllm_engine_metrics_are_exported_through_ray(serve_url: str, app_config: Any) -> None:
    """vLLM's own engine metrics (queue, KV cache, TTFT/TPOT) and the resident-adapter gauge reach the node's
    /metrics through Ray (the dashboard's engine panels), tagged by Serve replica, without the unbounded
    ``lora_requests_info`` series."""
    from tests.serve.test_observability import assert_scraped
    from tests.unit.test_deploy import dashboard_metrics

    body = {"model": "base:alpha", "prompt": "coffee", "max_tokens": 4}
    assert httpx.post(f"{serve_url}/v1/completions", json=body, timeout=120, headers=ADMIN).status_code == 200
    wanted = {m for m in dashboard_metrics() if m.startswith("ray_vllm_")} | {"ray_rmn_engine_loras_resident"}
    assert len(wanted) >= 5
    assert_scraped(wanted, app_config.http.metrics_port)
    text = httpx.get(f"http://127.0.0.1:{app_config.http.metrics_port}/metrics", timeout=10).text
    running = [ln for ln in text.splitlines() if ln.startswith("ray_vllm_num_requests_running{")]
    assert running and all('ReplicaId="' in ln for ln in running)
    assert "lora_requests_info" not in text
