"""GPU check of the engine module on CUDA (skipped without a GPU): the base model, an adapter and a composed
2-adapter stack answer and differ, eager and with CUDA graphs. GPU numerics are not batch-invariant, so nothing
here compares bits; answers are read through :func:`serving.replies.whole`, which the CPU tiers use too
(tests/unit/test_replies.py), so the way this test reads them cannot rot unseen."""

import asyncio

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "cuda-graphs"])
def test_engine_generates_with_adapters_and_a_stack_on_cuda(
    tiny_model, adapter_dirs, tmp_path, eager
) -> None:  # type: ignore[no-untyped-def]
    from adapters.compose import Component, compose_to_dir
    from serving.config import EngineConfig, ModelConfig
    from serving.engines.vllm_engine import VLLMEngine
    from serving.replies import whole

    stack = tmp_path / "stack"
    compose_to_dir([Component(adapter_dirs["alpha"], 0.5), Component(adapter_dirs["gamma"], 1.0)], stack)

    async def run() -> dict[str, str]:
        eng = VLLMEngine(
            ModelConfig(path=tiny_model),
            EngineConfig(device="cuda", gpu_memory_utilization=0.3, max_lora_rank=16, enforce_eager=eager),
        )
        await eng.start()
        await eng.add_adapter("base:alpha@1", str(adapter_dirs["alpha"]))
        await eng.add_adapter("base:stack@1", str(stack))
        out = {}
        try:
            for model in ("base", "base:alpha@1", "base:stack@1"):
                body = {"model": model, "prompt": "coffee", "max_tokens": 8, "temperature": 0}
                head, answer = await whole(eng.handle("completion", body))
                assert head.status == 200, answer
                out[model] = answer["choices"][0]["text"]
        finally:
            eng.shutdown()
        return out

    texts = asyncio.run(run())
    assert len(set(texts.values())) == 3, texts  # the adapter and the stack change the text
