"""On the in-process engine: the upstream vLLM CPU LoRA bug (index -1 -> last slot) stays neutralised on both
CPU paths (vLLM's per-token ops, masked, and the grouped path), and the grouped path gives the same greedy
tokens as vLLM's own ops for a batch mixing the base model, adapters and a composed stack."""

from collections.abc import Iterator

import pytest

from serving.engines import cpu_lora

pytestmark = pytest.mark.slow

PROMPT = "retail media plan for coffee"


@pytest.fixture(params=["grouped", "vllm"])
def cpu_path(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "vllm":
        cpu_lora.uninstall()
    else:
        cpu_lora.install()
    yield str(request.param)
    cpu_lora.install()  # the default


def test_base_request_batched_with_adapters_is_unchanged(llm, adapter_dirs, cpu_path) -> None:  # type: ignore[no-untyped-def]
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    assert cpu_lora.installed() == (cpu_path != "vllm")
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


def test_grouped_gives_vllms_greedy_tokens(llm, adapter_dirs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The grouped wrapper applies LoRA where its probe found vLLM's bits for the layer's shape and leaves the
    other layers to vLLM's ops (tests/unit/test_cpu_lora_grouped.py), so greedy text is the same token for
    token on any CPU; the demo model's adapters and stacks: bench/cpu_lora.py. The engine's workers report
    which path each layer shape took."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from adapters.compose import Component, compose_to_dir

    stack = tmp_path / "stack"
    compose_to_dir([Component(adapter_dirs["alpha"], 0.5), Component(adapter_dirs["gamma"], 1.0)], stack)
    loras = [
        None,
        LoRARequest("alpha", 1, str(adapter_dirs["alpha"])),
        LoRARequest("stack", 3, str(stack)),
        None,
        LoRARequest("alpha", 1, str(adapter_dirs["alpha"])),
    ]
    prompts = [PROMPT, "coffee ads", "plan a budget", "sponsored products on search", PROMPT]
    sp = SamplingParams(max_tokens=24, temperature=0)

    def run() -> list[list[int]]:
        outs = llm.generate(prompts, sp, lora_request=loras, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    try:
        cpu_lora.install()
        grouped = run()
        cpu_lora.uninstall()
        reference = run()
    finally:
        cpu_lora.install()
    assert grouped == reference
    assert grouped[1] != grouped[0] and grouped[2] != grouped[0]  # the adapters change the text
    from serving.engines.cpu_lora.wrapper import worker_probe

    (report,) = [r for worker in llm.collective_rpc(worker_probe) for r in worker]
    assert report["mode"] == "grouped" and report["machine"]["cpu"]
    shapes = {(layer["shape"]["hidden"], tuple(layer["shape"]["slices"])) for layer in report["layers"]}
    assert len(shapes) >= 4  # q/k/v, o, gate/up, down (and lm_head when targeted)
    assert all(layer["fused_error"] <= 2 * layer["vllm_error"] + 1e-6 for layer in report["layers"])
    assert report["bit_identical"] == all(layer["identical"] for layer in report["layers"])


def test_layers_no_adapter_of_the_batch_touches_run_their_base_layers_with_the_same_bits(
    llm, adapter_dirs
) -> None:  # type: ignore[no-untyped-def]
    """A batch with no adapter runs every LoRA layer's base layer alone, and a batch whose adapters target q/v
    only (the test adapters) runs the MLP and o_proj that way (no LoRA bookkeeping: the model with LoRA
    enabled about as fast as without); the same tokens and logprobs, bit for bit, as the LoRA path adding
    zero there, base and adapter alike."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from serving.engines.cpu_lora.wrapper import GroupedPunicaWrapperCPU, worker_reports

    def counts() -> tuple[int, int]:
        reports = [r for rs in llm.collective_rpc(worker_reports) for r in rs]
        return sum(r["idle_batches"] for r in reports), sum(r["bypassed_calls"] for r in reports)

    sp = SamplingParams(max_tokens=12, temperature=0, logprobs=5)
    alpha = LoRARequest("alpha", 1, str(adapter_dirs["alpha"]))

    def run(lora: LoRARequest | None) -> tuple[tuple[int, int], tuple[list[int], list[dict[int, float]]]]:
        start = counts()
        out = llm.generate([PROMPT], sp, lora_request=lora, use_tqdm=False)[0].outputs[0]
        logprobs = [{t: lp.logprob for t, lp in step.items()} for step in out.logprobs]
        end = counts()
        return (end[0] - start[0], end[1] - start[1]), (list(out.token_ids), logprobs)

    (idle, bypassed), base = run(None)
    assert idle >= 2 and bypassed > 0  # prefill and decode batches ran on the base layers
    (idle, bypassed), adapted = run(alpha)
    assert idle == 0 and bypassed > 0 and adapted[0] != base[0]  # o_proj and the MLP only
    GroupedPunicaWrapperCPU.bypass = False
    try:
        assert run(None) == ((0, 0), base)
        assert run(alpha) == ((0, 0), adapted)
    finally:
        GroupedPunicaWrapperCPU.bypass = True
