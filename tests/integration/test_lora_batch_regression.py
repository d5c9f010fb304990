"""Regression for the upstream vLLM CPU LoRA bug (index -1 -> last slot), on the in-process engine."""

import pytest

pytestmark = pytest.mark.slow

PROMPT = "retail media plan for coffee"


def test_base_request_batched_with_adapters_is_unchanged(llm, adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    sp = SamplingParams(max_tokens=16, temperature=0)
    base_alone = list(llm.generate([PROMPT], sp, use_tqdm=False)[0].outputs[0].token_ids)
    a = LoRARequest("alpha", 1, str(adapter_dirs["alpha"]))
    b = LoRARequest("beta", 2, str(adapter_dirs["beta"]))
    alone_a = list(llm.generate([PROMPT], sp, lora_request=a, use_tqdm=False)[0].outputs[0].token_ids)
    # Both slots are full, so the buggy index -1 would pick adapter 'beta' for the base request.
    mixed = llm.generate([PROMPT] * 3, sp, lora_request=[None, a, b], use_tqdm=False)
    out = [list(m.outputs[0].token_ids) for m in mixed]
    assert out[0] == base_alone
    assert out[1] == alone_a
    assert out[2] != base_alone and out[1] != base_alone  # the adapters do change the output
