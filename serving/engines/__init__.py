"""Inference engines behind one protocol (:class:`Engine`): vLLM, and a FakeEngine for fast tests.

Only this subpackage imports vLLM (lazily, inside :mod:`serving.engines.vllm_engine`), and the CPU LoRA
plugin (:mod:`serving.engines.lora_plugin`) lives here too.
"""

from __future__ import annotations

from collections.abc import Callable

from serving.engines.config import EngineConfig, ModelConfig
from serving.engines.protocol import Engine, Kind

__all__ = ["Engine", "EngineFactory", "Kind", "create_engine"]

EngineFactory = Callable[[ModelConfig, EngineConfig], Engine]
"""Makes an engine from the model and engine sections: vLLM's by default; tests pass the FakeEngine (as Ray
Serve LLM passes an ``engine_cls``), so no production config names a test double."""


def create_engine(
    model: ModelConfig, engine: EngineConfig, engine_cls: EngineFactory | None = None
) -> Engine:
    """The engine ``engine_cls`` makes, vLLM's when None (not started)."""
    if engine_cls is not None:
        return engine_cls(model, engine)
    from serving.engines.vllm_engine import VLLMEngine

    return VLLMEngine(model, engine)
