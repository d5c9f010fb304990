"""GPU smoke test: the same engine module on CUDA (skipped without a GPU)."""

import asyncio

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_engine_generates_with_adapter_on_cuda(tiny_model, adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    from serving.config import EngineConfig, ModelConfig
    from serving.engines.vllm_engine import VLLMEngine

    async def run() -> tuple[str, str]:
        eng = VLLMEngine(
            ModelConfig(path=tiny_model),
            EngineConfig(
                device="cuda", kv_cache_memory_bytes=None, gpu_memory_utilization=0.3, max_lora_rank=16
            ),
        )
        await eng.start()
        await eng.add_adapter("base:alpha@1", str(adapter_dirs["alpha"]))
        out = []
        for model in ("base", "base:alpha@1"):
            items = [
                x
                async for x in eng.handle(
                    "completion", {"model": model, "prompt": "coffee", "max_tokens": 8, "temperature": 0}
                )
            ]
            out.append(items[1]["body"]["choices"][0]["text"])
        eng.shutdown()
        return out[0], out[1]

    base, adapted = asyncio.run(run())
    assert base != adapted
