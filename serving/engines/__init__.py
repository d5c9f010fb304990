"""Inference engines behind one protocol (:class:`Engine`): vLLM, and a FakeEngine for fast tests.

Only this subpackage imports vLLM (lazily, inside :mod:`serving.engines.vllm_engine`), and the CPU LoRA
plugin (:mod:`serving.engines.lora_plugin`) lives here too.
"""

from __future__ import annotations

from serving.config import EngineConfig, ModelConfig
from serving.engines.protocol import Engine, Kind

__all__ = ["Engine", "Kind", "create_engine"]


def create_engine(model: ModelConfig, engine: EngineConfig) -> Engine:
    """The engine ``engine.kind`` names (not started)."""
    if engine.kind == "fake":
        from serving.engines.fake import FakeEngine

        return FakeEngine(model, engine)
    from serving.engines.vllm_engine import VLLMEngine

    return VLLMEngine(model, engine)
