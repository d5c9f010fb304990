"""The engine's CPU LoRA gauge: layer shapes counted by how they are served (vLLM's bits, bounded, vLLM's ops)."""

from __future__ import annotations

from typing import Any

from serving.metrics import EngineMetrics


class _Gauge:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values[tags["path"]] = value


def _layer(identical: bool, bounded: bool, arithmetic: str) -> dict[str, Any]:
    return {"identical": identical, "bounded": bounded, "arithmetic": arithmetic}


def test_layer_shapes_are_counted_by_how_they_are_served() -> None:
    metrics = EngineMetrics.__new__(EngineMetrics)  # the gauge alone: no Ray metrics agent needed
    metrics.cpu_lora_layers = _Gauge()  # type: ignore[assignment]
    layers = [
        _layer(
            False, True, "compact"
        ),  # engine.cpu_lora: grouped where the compact arithmetic is within the bound
        _layer(True, True, "grouped"),
        _layer(False, True, "grouped"),  # engine.cpu_lora: grouped, other bits within the bound
        _layer(False, True, "vllm"),  # engine.cpu_lora: exact
        _layer(False, False, "vllm"),  # over the bound
    ]
    metrics.record_numerics({"cpu_lora": {"mode": "grouped", "layers": layers}})
    assert metrics.cpu_lora_layers.values == {"compact": 1, "grouped": 1, "bounded": 1, "vllm": 2}  # type: ignore[attr-defined]
    # two workers' reports (a list), and a report from before the arithmetic was named
    metrics.record_numerics({"cpu_lora": [{"layers": layers[1:2]}, {"layers": [{"identical": False}]}]})
    assert metrics.cpu_lora_layers.values == {"compact": 0, "grouped": 1, "bounded": 0, "vllm": 1}  # type: ignore[attr-defined]
    metrics.record_numerics({"cpu_lora": None})  # off CPU: nothing set
    assert metrics.cpu_lora_layers.values == {"compact": 0, "grouped": 1, "bounded": 0, "vllm": 1}  # type: ignore[attr-defined]
