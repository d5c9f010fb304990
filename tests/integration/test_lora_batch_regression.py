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


def test_a_step_without_adapters_runs_the_base_layers_with_the_same_bits(llm, adapter_dirs) -> None:  # type: ignore[no-untyped-def]
    """A batch with no adapter anywhere runs each LoRA layer's base layer alone (no LoRA bookkeeping: the
    model with LoRA enabled as fast as without); the same tokens and the same logprobs, bit for bit, as the
    LoRA path adding zero; a batch with an adapter still takes the LoRA path."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from serving.engines.cpu_lora.wrapper import GroupedPunicaWrapperCPU, worker_reports

    def idle_batches() -> int:
        return sum(r["idle_batches"] for reports in llm.collective_rpc(worker_reports) for r in reports)

    sp = SamplingParams(max_tokens=12, temperature=0, logprobs=5)

    def run(lora: LoRARequest | None = None) -> tuple[list[int], list[dict[int, float]]]:
        out = llm.generate([PROMPT], sp, lora_request=lora, use_tqdm=False)[0].outputs[0]
        logprobs = [{t: lp.logprob for t, lp in step.items()} for step in out.logprobs]
        return list(out.token_ids), logprobs

    start = idle_batches()
    bypassed = run()
    assert idle_batches() >= start + 2  # prefill and decode batches ran on the base layers
    GroupedPunicaWrapperCPU.bypass = False
    try:
        start = idle_batches()
        through_lora = run()
        assert idle_batches() == start
    finally:
        GroupedPunicaWrapperCPU.bypass = True
    assert bypassed == through_lora
    start = idle_batches()
    adapted = run(LoRARequest("alpha", 1, str(adapter_dirs["alpha"])))
    assert idle_batches() == start and adapted[0] != bypassed[0]
