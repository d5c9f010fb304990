"""On the in-process engine: the upstream vLLM CPU LoRA bug (index -1 -> last slot) stays neutralised on both
CPU paths (vLLM's per-token ops, masked, and the grouped path); for a batch mixing the base model, adapters
and a composed stack the ``exact`` mode gives vLLM's greedy tokens, and the default ``grouped`` mode gives
them too or departs only at a near-tie (on a CPU whose oneDNN/MKL sum in another order than vLLM's ops)."""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _departure(got: list[Any], want: list[Any]) -> str | None:
    """None when two greedy outputs (vLLM ``CompletionOutput`` with logprobs) are the same token for token with
    logprobs within 0.05, or part only where both runs saw a near-tie (each run's token in the other's top 2,
    their logprobs within 0.05 of each other); else why not. (Another rounding of the same bf16 sums, carried
    through every layer of the model, moves a logprob by a few hundredths: 0.028 measured for the compact
    arithmetic on the test model, whose per-op error against float64 equals vLLM's own.)"""
    for i, (a, b) in enumerate(zip(got.token_ids, want.token_ids, strict=False)):
        la, lb = got.logprobs[i], want.logprobs[i]
        if a == b:
            if abs(la[a].logprob - lb[b].logprob) > 0.05:
                return f"token {i}: logprob {la[a].logprob} vs {lb[b].logprob}"
            continue
        tie = b in la and a in lb and abs(la[a].logprob - la[b].logprob) <= 0.05
        return None if tie else f"token {i}: {a} vs {b}, not a near-tie ({la}, {lb})"
    return None if len(got.token_ids) == len(want.token_ids) else "lengths differ"


def test_grouped_gives_vllms_greedy_tokens(llm, adapter_dirs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``exact`` applies the grouped arithmetic where its probe found vLLM's bits for the layer's shape and
    leaves the other layers to vLLM's ops (tests/unit/test_cpu_lora_grouped.py), so greedy text is the same
    token for token on any CPU. ``grouped`` (the default) also serves the layers whose bits differ but whose
    error against float64 is within 2x vLLM's own: its greedy text is vLLM's, or parts from it only at a
    near-tie. ``compact`` (never vLLM's bits) likewise. The demo model's adapters and stacks: bench/cpu_lora.py.
    The engine's workers report which path each layer shape took."""
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
    sp = SamplingParams(max_tokens=24, temperature=0, logprobs=2)

    def run(mode: str) -> list[Any]:
        cpu_lora.set_mode(mode)
        return [o.outputs[0] for o in llm.generate(prompts, sp, lora_request=loras, use_tqdm=False)]

    try:
        exact, grouped, compact, reference = run("exact"), run("grouped"), run("compact"), run("vllm")
    finally:
        cpu_lora.install()

    def tokens(outs: list[Any]) -> list[list[int]]:
        return [list(o.token_ids) for o in outs]

    assert tokens(exact) == tokens(reference)
    assert tokens(exact)[1] != tokens(exact)[0] and tokens(exact)[2] != tokens(exact)[0]  # adapters change it
    from serving.engines.cpu_lora.wrapper import worker_probe

    (report,) = [r for worker in llm.collective_rpc(worker_probe) for r in worker]
    assert report["mode"] == "grouped" and report["machine"]["cpu"]
    shapes = {(layer["shape"]["hidden"], tuple(layer["shape"]["slices"])) for layer in report["layers"]}
    assert len(shapes) >= 4  # q/k/v, o, gate/up, down (and lm_head when targeted)
    for layer in report["layers"]:
        assert layer["arithmetic"] == ("grouped" if layer["identical"] or layer["bounded"] else "vllm")
        assert layer["bounded"] == (layer["fused_error"] <= 2 * layer["vllm_error"] + 1e-6)
    assert report["bit_identical"] == all(
        layer["arithmetic"] == "vllm" or (layer["identical"] and layer["arithmetic"] == "grouped")
        for layer in report["layers"]
    )
    if os.environ.get("RMN_TEST_CPU_LORA_REPORT"):  # tests/unit/test_cpu_lora_isa.py: which path ran, capped
        Path(os.environ["RMN_TEST_CPU_LORA_REPORT"]).write_text(json.dumps(report))
    if report["bit_identical"]:
        assert tokens(grouped) == tokens(reference)
    for i, (got, want) in enumerate(zip(grouped, reference, strict=True)):
        assert _departure(got, want) is None, (i, loras[i], _departure(got, want))
    for i, (got, want) in enumerate(zip(compact, reference, strict=True)):  # never vLLM's bits, bounded
        assert _departure(got, want) is None, (i, loras[i], "compact", _departure(got, want))


def test_layers_no_adapter_of_the_batch_touches_run_their_base_layers_with_the_same_bits(
    llm, adapter_dirs
) -> None:  # type: ignore[no-untyped-def]
    """A batch with no adapter runs every LoRA layer's base layer alone, and a batch whose adapters target q/v
    only (the test adapters) runs the MLP and o_proj that way and adds no lm_head LoRA (no LoRA bookkeeping:
    the model with LoRA enabled about as fast as without); the same tokens and logprobs, bit for bit, as the
    LoRA path adding zero there, base and adapter alike."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from serving.engines.cpu_lora.wrapper import GroupedPunicaWrapperCPU, worker_reports

    def counts() -> tuple[int, int]:
        reports = [r for rs in llm.collective_rpc(worker_reports) for r in rs]
        return sum(r["idle_batches"] for r in reports), sum(r["bypassed_calls"] for r in reports)

    def logits_bypassed() -> int:
        return sum(r["bypassed_logits"] for rs in llm.collective_rpc(worker_reports) for r in rs)

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
    before = logits_bypassed()
    (idle, bypassed), adapted = run(alpha)
    assert idle == 0 and bypassed > 0 and adapted[0] != base[0]  # o_proj and the MLP only
    assert (
        logits_bypassed() - before >= 12
    )  # alpha has no lm_head weights: its logits add nothing, every step
    GroupedPunicaWrapperCPU.bypass = False
    try:
        assert run(None) == ((0, 0), base)
        assert run(alpha) == ((0, 0), adapted)
    finally:
        GroupedPunicaWrapperCPU.bypass = True


def test_a_slot_reused_by_adapters_of_other_layers_holds_only_the_new_adapters_weights(
    llm, adapter_dirs, tiny_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """vLLM zeroes a slot's layers that the adapter it loads there does not target; the wrapper skips that reset
    where the slot holds no weights (counted), never where it does: the q/v adapter alpha, loaded again into a
    slot whose o_proj and MLP weights an adapter of those layers left there, gives the same tokens and
    logprobs, bit for bit, as before (every layer running its LoRA path: the bypass of layers no slot of the
    batch holds weights in would hide stale weights)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from adapters.synthetic import make_random_adapter
    from serving.engines.cpu_lora.wrapper import GroupedPunicaWrapperCPU, worker_reports

    sp = SamplingParams(max_tokens=12, temperature=0, logprobs=5)
    layers = ("o_proj", "gate_proj", "up_proj", "down_proj")
    others = [
        LoRARequest(
            f"mlp{i}",
            901 + i,
            str(make_random_adapter(tiny_model, tmp_path / f"mlp{i}", 60 + i, 8, 16, layers)),
        )
        for i in range(2)  # as many as the engine's slots: alpha is evicted, both slots hold MLP weights
    ]
    alpha = LoRARequest("alpha", 1, str(adapter_dirs["alpha"]))

    def run(lora: LoRARequest) -> tuple[list[int], list[dict[int, float]]]:
        out = llm.generate([PROMPT], sp, lora_request=lora, use_tqdm=False)[0].outputs[0]
        return list(out.token_ids), [{t: lp.logprob for t, lp in step.items()} for step in out.logprobs]

    def skipped() -> int:
        return sum(r["skipped_resets"] for rs in llm.collective_rpc(worker_reports) for r in rs)

    GroupedPunicaWrapperCPU.bypass = False  # every layer runs its LoRA: a stale slot would add its weights
    try:
        before = run(alpha)
        start = skipped()
        base = llm.generate([PROMPT], sp, use_tqdm=False)[0].outputs[0].token_ids
        assert all(run(lora)[0] != list(base) for lora in others)  # their weights are in the slots
        assert run(alpha) == before
        assert skipped() > start
    finally:
        GroupedPunicaWrapperCPU.bypass = True
