"""The grouped CPU LoRA path against vLLM's reference ops (the per-token gather, with index -1 masked) and a
float64 reference: random shapes, several slices, mixed slots, tokens without an adapter, real ranks below
vLLM's padded rank, the demo model's shapes.

What holds on every CPU (and is asserted on every CPU): ``exact`` mode gives vLLM's bits (the grouped
arithmetic where the probe found the layer's shape bit-identical, vLLM's own ops elsewhere); ``grouped`` mode
(the default) gives them where the probe found them and elsewhere stays within 2x vLLM's own error of float64;
``compact`` mode (the compact arithmetic where the probe finds it within that bound) stays within it everywhere;
the fused arithmetic (``fused`` mode: no probe) is within that bound, and bit-identical wherever the probe says
so. Which shapes pass depends on the CPU's ISA (tests/unit/test_cpu_lora_isa.py runs this file under
oneDNN's and MKL's ISA caps)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from serving.engines.cpu_lora import GroupedLoRA, SlotWeights, arithmetic, probe, slot_groups
from serving.engines.cpu_lora.grouped import check_shape
from serving.engines.cpu_lora.probe import LayerShape, float64_reference, vllm_reference

MODES = ["grouped", "exact", "fused", "compact"]


def gives_vllms_bits(grouped: GroupedLoRA, check: probe.ShapeCheck | None, arithmetic: str) -> bool:
    """Whether a mode's answer for a layer must be vLLM's bits: ``exact`` always; otherwise where the fused
    arithmetic serves a shape the probe (``check``; None: not probed) found bit-identical."""
    if grouped.mode == "exact":
        return True
    return arithmetic == "grouped" and check is not None and check.identical


def apply(grouped: GroupedLoRA, y, x, idx, lora_a, lora_b, scale, slices, batch=None) -> None:  # type: ignore[no-untyped-def]
    """What the wrapper does: the grouped arithmetic, or vLLM's ops where it declines the layer."""
    if not grouped.linear(y, x, idx, lora_a, lora_b, scale, slices, batch=batch):
        y.copy_(vllm_reference(y, x, idx, lora_a, lora_b, scale, slices))


CASES = [  # tokens, in, rank, slices, slots, indices pattern
    (1, 32, 8, (16,), 2, "one"),
    (7, 48, 8, (24, 8, 8), 3, "mixed"),
    (33, 64, 16, (64,), 4, "mixed"),
    (12, 40, 8, (20, 20), 2, "all-none"),
    (9, 40, 8, (20, 20), 2, "all-same"),
    (6, 32, 1, (16, 16), 3, "mixed"),  # max_lora_rank 1: not a whole row block, the exact arithmetic
]


def _data(tokens, hidden, rank, slices, slots, pattern, dtype, seed=0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    lora_a = tuple(
        torch.randn(slots, 1, rank, hidden, generator=g).div(hidden**0.5).to(dtype) for _ in slices
    )
    lora_b = tuple(torch.randn(slots, 1, size, rank, generator=g).div(rank**0.5).to(dtype) for size in slices)
    y = torch.randn(tokens, sum(slices), generator=g).to(dtype)
    if pattern == "one":
        idx = torch.tensor([1])
    elif pattern == "all-none":
        idx = torch.full((tokens,), -1)
    elif pattern == "all-same":
        idx = torch.full((tokens,), 1)
    else:
        idx = torch.randint(-1, slots, (tokens,), generator=g)
        idx[0], idx[-1] = -1, slots - 1  # at least one token without an adapter, and the last slot
    return y, x, idx, lora_a, lora_b


def _error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).abs().max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}tok-{len(c[3])}slices-{c[5]}" for c in CASES])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_grouped_matches_vllm_reference(case: tuple, dtype: torch.dtype, scale: float, mode: str) -> None:
    y, x, idx, lora_a, lora_b = _data(*case, dtype=dtype)
    want_vllm = vllm_reference(y, x, idx, lora_a, lora_b, scale, case[3])
    want_f64 = float64_reference(y, x, idx, lora_a, lora_b, scale, case[3])
    none = idx < 0
    prober = GroupedLoRA("exact", max_tokens=64)
    prober.serves(lora_a, case[3], 64)  # the probe: vLLM's bits on this CPU?
    (check,) = prober.checks.values()
    for dense_max in (0, 1 << 20):  # the batched slots in either layout: own rows, every slot's rows masked
        got = y.clone()
        grouped = GroupedLoRA(mode, SlotWeights(dense_max_cols=dense_max), max_tokens=64)  # type: ignore[arg-type]
        apply(grouped, got, x, idx, lora_a, lora_b, scale, case[3])
        if gives_vllms_bits(grouped, check, grouped.serves(lora_a, case[3], 64)):
            assert torch.equal(got, want_vllm)  # vLLM's arithmetic, bit for bit
        assert torch.equal(got[none], y[none])  # rows without an adapter keep their values
        tolerance = 1e-5 if dtype == torch.float32 else 0.05  # and both are that close to float64
        torch.testing.assert_close(got.double(), want_f64, rtol=tolerance, atol=tolerance)
        assert _error(got, want_f64) <= 2 * _error(want_vllm, want_f64) + 1e-6
    lora_effect = (want_f64 - y.double()).abs().max().item()
    assert none.all() or lora_effect > 0.05  # the adapters do move the rows they apply to


DEMO_MODULES = [  # SmolLM2-135M: (input size, output slices) of qkv, o, gate_up, down
    (576, (576, 192, 192)),
    (576, (576,)),
    (576, (1536, 1536)),
    (1536, (576,)),
]


@pytest.fixture(scope="module")
def demo_checks() -> dict[LayerShape, probe.ShapeCheck]:
    """The probe's verdicts for the demo model's shapes (8 slots, r_max 64, up to 300 tokens), run once (the compact arithmetic too)."""
    shapes = [LayerShape(hidden, slices, 64, 8, "bfloat16") for hidden, slices in DEMO_MODULES]
    return {shape: check_shape(shape, 300, compact=True) for shape in shapes}


@pytest.mark.numerics
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dense_max", [0, 256, 1 << 20], ids=["own-rows", "default", "all-masked"])
@pytest.mark.parametrize("seed", range(3))
def test_demo_models_shapes(seed: int, dense_max: int, mode: str, demo_checks: dict) -> None:
    """The demo model's layer shapes in bf16, 8 slots with real ranks that are not multiples of anything (1..64
    inside vLLM's 64), decode-sized and prefill-sized batches mixing slots and no adapter, the serving shapes
    (one decode per slot, two decodes sharing a slot, a prefill chunk among decodes): ``exact`` gives vLLM's
    bits on any CPU; ``grouped``, ``fused`` and ``compact`` stay within 2x vLLM's own error of float64, and the
    fused arithmetic gives vLLM's bits wherever the probe found the shape bit-identical at the probed token
    counts; ``grouped`` serves a shape with the fused arithmetic exactly when the probe found it bit-identical or
    within that bound; ``compact`` with the compact one where the probe found it within the bound (every demo
    shape, on every CPU)."""
    g = torch.Generator().manual_seed(seed)
    slots = 8
    serving = {
        "decode": torch.randperm(slots, generator=g),
        "shared": torch.tensor([3, 0, 5, 3, 1, -1, 7, 2]),
        "prefill": torch.cat([torch.full((40,), 6), torch.tensor([0, -1, 1, 2, 2, 3, 4, 5, 7])]),
    }
    grouped = GroupedLoRA(mode, SlotWeights(dense_max_cols=dense_max), max_tokens=300)  # type: ignore[arg-type]
    grouped.checks.update(demo_checks)
    for hidden, slices in DEMO_MODULES:
        shape = LayerShape(hidden, slices, 64, slots, "bfloat16")
        ranks = torch.randint(1, 65, (slots,), generator=g).tolist()
        ranks[seed % slots] = 64  # one slot at the full padded rank
        lora_a, lora_b = probe.padded_weights(shape, ranks, g)
        check = demo_checks[shape]
        assert check.bounded  # the fused arithmetic's error within the bound at every probed count, any CPU
        assert check.compact_bounded  # and the compact one's
        fused = "grouped" if check.identical or check.bounded else "vllm"
        taken = {
            "fused": "grouped",
            "compact": "compact" if check.compact_bounded else fused,
            "exact": "grouped" if check.identical else "vllm",
            "grouped": fused,
        }[mode]
        assert grouped.serves(lora_a, slices, 300) == taken
        for form in [*((1, 1), (5, 2), (32, 4), (32, 8), (300, 8)), *serving.values()]:
            idx = torch.randint(-1, form[1], (form[0],), generator=g) if isinstance(form, tuple) else form
            tokens = idx.shape[0]
            x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
            y = torch.randn(tokens, sum(slices), generator=g).to(torch.bfloat16)
            scale = float(torch.rand(1, generator=g)) + 0.25
            want = vllm_reference(y, x, idx, lora_a, lora_b, scale, slices)
            got = y.clone()
            apply(grouped, got, x, idx, lora_a, lora_b, scale, slices)
            if gives_vllms_bits(grouped, check, taken):
                assert torch.equal(got, want), (mode, hidden, slices, tokens, ranks)
            exact = float64_reference(y, x, idx, lora_a, lora_b, scale, slices)
            assert _error(got, exact) <= 2 * _error(want, exact) + 1e-6


@pytest.mark.parametrize("drift", ["reordered", "large"])
def test_a_probe_that_finds_a_difference_decides_by_mode_and_error(
    monkeypatch: pytest.MonkeyPatch, drift: str
) -> None:
    """Where the fused path sums in another order (simulated for batches of more than 8 tokens, as oneDNN's
    blocking changes with the token count on some CPUs: the expand's sum done in float64 and rounded once —
    other bits, a smaller error), the probe names those token counts; ``grouped`` still serves the layer (its
    error within 2x vLLM's own: bounded, not bit-identical) and ``exact`` declines it (vLLM's own ops run it,
    vLLM's bits). A drift far over the bound (a quarter added) is declined by both. The compact arithmetic is
    drifted far over the bound throughout, so ``grouped`` mode decides by the fused arithmetic's verdict."""
    original = arithmetic.expand
    original_compact = arithmetic.compact

    def drifting_compact(y2, *args):  # type: ignore[no-untyped-def]
        original_compact(y2, *args)
        y2 += 0.25

    def drifting(y2, h, b_parts, output_slices, scale, rows):  # type: ignore[no-untyped-def]
        before = y2.clone()
        original(y2, h, b_parts, output_slices, scale, rows)
        if h.shape[0] <= 8:
            return
        if drift == "large":
            y2[y2 != before] += 0.25
            return
        target, hd = before.double(), h.double() * scale
        offset = col = 0
        for b, size in zip(b_parts, output_slices, strict=True):
            if b is not None:
                out = (hd[..., col : col + b.shape[-1]] @ b.double().transpose(-1, -2)).view(h.shape[0], size)
                arithmetic.add_rows(target[:, offset : offset + size], out, rows)
                col += b.shape[-1]
            offset += size
        y2.copy_(target.to(y2.dtype))

    monkeypatch.setattr(arithmetic, "expand", drifting)
    monkeypatch.setattr("serving.engines.cpu_lora.grouped.expand", drifting)
    monkeypatch.setattr("serving.engines.cpu_lora.grouped.compact", drifting_compact)
    slices = (64, 32)
    shape = LayerShape(64, slices, 16, 4, "bfloat16")
    check = check_shape(shape, 64)
    assert check.mismatched and min(check.mismatched) > 8 and not check.identical
    assert check.bounded == (drift == "reordered") and not check.compact_bounded
    y, x, idx, lora_a, lora_b = _data(33, 64, 16, slices, 4, "mixed", dtype=torch.bfloat16, seed=7)
    want = vllm_reference(y, x, idx, lora_a, lora_b, 0.5, slices)
    exact_f64 = float64_reference(y, x, idx, lora_a, lora_b, 0.5, slices)
    fused = GroupedLoRA("fused")
    got_fused = y.clone()
    assert fused.linear(got_fused, x, idx, lora_a, lora_b, 0.5, slices)
    assert not torch.equal(got_fused, want)  # the drift is real
    exact = GroupedLoRA("exact", max_tokens=64)
    got = y.clone()
    assert exact.linear(got, x, idx, lora_a, lora_b, 0.5, slices) is False  # declined, y untouched
    assert torch.equal(got, y)
    grouped = GroupedLoRA("grouped", max_tokens=64)
    got = y.clone()
    assert grouped.linear(got, x, idx, lora_a, lora_b, 0.5, slices) is check.bounded
    if check.bounded:
        assert torch.equal(got, got_fused) and _error(got, exact_f64) <= 2 * _error(want, exact_f64) + 1e-6
    for mode, report in (("exact", exact.report()), ("grouped", grouped.report())):
        (layer,) = report["layers"]
        assert layer["mismatched"] == check.mismatched and layer["bounded"] == check.bounded
        served = mode == "grouped" and check.bounded
        assert layer["arithmetic"] == ("grouped" if served else "vllm")
        assert report["bit_identical"] is (not served)  # vLLM's ops give vLLM's bits
        assert report["error_bound"] == probe.ERROR_FACTOR
        assert report["machine"]["cpu"] and report["machine"]["capability"]
    assert "differed from vLLM's bits" in grouped.verdict(check)


def test_report_names_the_verdict_per_layer_shape() -> None:
    y, x, idx, lora_a, lora_b = _data(9, 40, 8, (20, 20), 2, "mixed", dtype=torch.bfloat16)
    grouped = GroupedLoRA("grouped", max_tokens=16)
    grouped.linear(y, x, idx, lora_a, lora_b, 0.5, (20, 20))
    report = grouped.report()
    (layer,) = report["layers"]
    assert layer["shape"] == {"hidden": 40, "slices": (20, 20), "r_max": 8, "slots": 2, "dtype": "bfloat16"}
    assert layer["tokens"] == probe.token_counts(16) and layer["seconds"] > 0
    assert layer["arithmetic"] == ("grouped" if layer["identical"] or layer["bounded"] else "vllm")
    assert layer["compact_error"] is None and not layer["compact_bounded"]  # probed only in compact mode
    bits = layer["arithmetic"] == "vllm" or layer["identical"]
    assert report["bit_identical"] == bits
    compact = GroupedLoRA("compact", max_tokens=16)
    compact.linear(y.clone(), x, idx, lora_a, lora_b, 0.5, (20, 20))
    (layer,) = compact.report()["layers"]
    assert layer["compact_bounded"] == (layer["compact_error"] <= 2 * layer["vllm_error"] + 1e-6)
    fused = "grouped" if layer["identical"] or layer["bounded"] else "vllm"
    assert layer["arithmetic"] == ("compact" if layer["compact_bounded"] else fused)
    assert compact.report()["bit_identical"] is (
        layer["arithmetic"] == "vllm" or (layer["identical"] and fused == layer["arithmetic"])
    )
    assert GroupedLoRA("fused").report()["bit_identical"] is None  # not probed: no claim
    assert GroupedLoRA(force="compact").report()["bit_identical"] is None


def test_slot_groups() -> None:
    assert slot_groups(torch.tensor([2, 2, 2])) == [(2, None)]
    assert slot_groups(torch.tensor([-1, -1])) == []
    groups = dict(slot_groups(torch.tensor([0, -1, 1, 0])))
    assert set(groups) == {0, 1}
    assert groups[0].tolist() == [0, 3] and groups[1].tolist() == [2]


def test_plugin_selects_the_grouped_wrapper_only_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA vLLM runs PunicaWrapperGPU and its Triton ops: the plugin leaves them as they are; on CPU the
    platform names the grouped subclass, and RMN_CPU_LORA picks its mode (vllm: vLLM's own ops)."""
    import warnings

    from serving.engines import cpu_lora
    from serving.engines import lora_plugin as fix
    from serving.engines.cpu_lora import wrapper

    with warnings.catch_warnings():  # vLLM's GPU modules use torch.jit.script_method (deprecated in torch)
        warnings.simplefilter("ignore", DeprecationWarning)
        from vllm.lora.punica_wrapper import punica_cpu, punica_gpu
        from vllm.platforms.interface import Platform

    gpu_methods, cpu_methods = (
        dict(vars(punica_gpu.PunicaWrapperGPU)),
        dict(vars(punica_cpu.PunicaWrapperCPU)),
    )
    platform_default = vars(Platform)["get_punica_wrapper"]
    monkeypatch.setenv("RMN_CPU_LORA", "grouped")
    fix.register()
    assert cpu_lora.installed() and cpu_lora.mode() == "grouped"
    assert issubclass(wrapper.GroupedPunicaWrapperCPU, punica_cpu.PunicaWrapperCPU)
    assert (
        vars(Platform)["get_punica_wrapper"] is platform_default
    )  # only the CPU platform names another class
    assert dict(vars(punica_gpu.PunicaWrapperGPU)) == gpu_methods
    assert dict(vars(punica_cpu.PunicaWrapperCPU)) == cpu_methods  # a subclass: vLLM's class is untouched
    monkeypatch.setenv("RMN_CPU_LORA", "vllm")
    fix.register()
    assert not cpu_lora.installed()
    monkeypatch.setenv("RMN_CPU_LORA", "exact")
    fix.register()
    assert cpu_lora.installed() and cpu_lora.mode() == "exact"
    with pytest.raises(
        ValueError, match="RMN_CPU_LORA must be grouped, exact, fused, compact or vllm, not 'fast'"
    ):
        cpu_lora.set_mode("fast")
    cpu_lora.install()
    assert cpu_lora.mode() == "grouped"


def test_grouped_uses_each_slots_real_rank_and_skips_untouched_slices() -> None:
    """vLLM zero-pads adapters to max_lora_rank and zero-fills slices an adapter does not target: the grouped
    path must give the same result from the nonzero part alone (and know the ranks)."""
    y, x, idx, lora_a, lora_b = _data(11, 48, 16, (24, 8, 8), 3, "mixed", dtype=torch.float32, seed=3)
    # slot 0: rank 4 (rows 4.. are padding); slot 1: rank 16, but no weights on the middle slice (like k_proj
    # of a q/v adapter); slot 2: nothing on any slice (an adapter of other modules)
    for a, b in zip(lora_a, lora_b, strict=True):
        a[0, 0, 4:] = 0
        b[0, 0, :, 4:] = 0
        a[2], b[2] = 0, 0
    lora_a[1][1], lora_b[1][1] = 0, 0
    want = float64_reference(y, x, idx, lora_a, lora_b, 0.5, (24, 8, 8))
    for mode in MODES:
        got = y.clone()
        apply(GroupedLoRA(mode), got, x, idx, lora_a, lora_b, 0.5, (24, 8, 8))  # type: ignore[arg-type]
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    weights = SlotWeights()
    weights.set_slots([11, 12, 13])
    assert [weights.rank(a, 0) for a in lora_a] == [4, 4, 4]
    assert [weights.rank(a, 1) for a in lora_a] == [16, 0, 16]
    assert [weights.rank(a, 2) for a in lora_a] == [0, 0, 0]
    # vLLM puts another adapter into slot 2 (a new id in lora_index_to_id): its rank is read again
    lora_a[0][2, 0, :6] = 1.0
    weights.set_slots([11, 12, 13])
    assert weights.rank(lora_a[0], 2) == 0  # the same adapter id: cached
    weights.set_slots([11, 12, 14])
    assert weights.rank(lora_a[0], 2) == 6
    weights.set_slots([11, 12, None])  # a slot emptied keeps its entries until another adapter comes
    assert weights.rank(lora_a[0], 2) == 6


@pytest.mark.parametrize("mode", MODES)
def test_a_batchs_plan_is_rerun_until_the_batch_changes(mode: str) -> None:
    """With a batch number (the wrapper's, changed on every ``update_metadata``) a layer is planned once and
    its plan rerun on later steps of that batch: the same bits as planning every call, on new inputs; another
    number (new adapters in the slots, other tokens) plans again, while the old number would rerun the old
    plan — the caller's contract, which the wrapper keeps."""
    slices = (24, 8, 8)
    y, x, idx, lora_a, lora_b = _data(9, 48, 8, slices, 3, "mixed", dtype=torch.bfloat16, seed=5)
    planned = GroupedLoRA(mode, max_tokens=64)  # type: ignore[arg-type]
    planned.weights.set_slots([1, 2, 3])
    g = torch.Generator().manual_seed(9)
    for step in range(3):  # a decode batch: the same slots, new hidden states every step
        xs = torch.randn(x.shape, generator=g).to(x.dtype)
        got, want = y.clone(), y.clone()
        apply(planned, got, xs, idx, lora_a, lora_b, 0.5, slices, batch=1)
        apply(GroupedLoRA(mode, max_tokens=64), want, xs, idx, lora_a, lora_b, 0.5, slices)  # type: ignore[arg-type]
        assert torch.equal(got, want), step
    assert len(planned._plans) == 1
    for a, b in zip(lora_a, lora_b, strict=True):  # vLLM puts another adapter (id 4) into slot 2
        a[2].mul_(-2)
        b[2].mul_(3)
    fresh = y.clone()
    apply(GroupedLoRA(mode, max_tokens=64), fresh, x, idx, lora_a, lora_b, 0.5, slices)  # type: ignore[arg-type]
    stale = y.clone()  # the same number: the plan of the old weights runs (vLLM's ops read the slots anew)
    apply(planned, stale, x, idx, lora_a, lora_b, 0.5, slices, batch=1)
    assert torch.equal(stale, fresh) == (planned.serves(lora_a, slices, 64) == "vllm")
    planned.weights.set_slots([1, 2, 4])
    again = y.clone()
    apply(planned, again, x, idx, lora_a, lora_b, 0.5, slices, batch=2)
    assert torch.equal(again, fresh)


def test_stacked_weights_stay_within_their_memory_budget() -> None:
    """Stacked fp32 copies are a cache: bounded per layer (slot sets kept) and across layers (bytes); a
    refilled slot's stale copy is dropped, and answers stay right after the cache starts over."""
    from serving.engines.cpu_lora.weights import nbytes

    y, x, idx, lora_a, lora_b = _data(33, 64, 16, (64,), 4, "mixed", dtype=torch.float32, seed=5)
    probe_weights = SlotWeights()
    one = nbytes(probe_weights.stacked(lora_a, lora_b, (0, 1, 2, 3)))
    weights = SlotWeights(budget_bytes=2 * one)
    weights.set_slots([1, 2, 3, 4])
    want = float64_reference(y, x, idx, lora_a, lora_b, 1.0, (64,))
    for slots in [(0,), (1,), (2,), (3,), (0, 1), (1, 2), (0, 1, 2, 3)]:
        weights.stacked(lora_a, lora_b, slots)
        assert len(weights.layer_entries(lora_a)) <= weights.batches_kept
        assert weights.stacked_bytes <= weights.budget_bytes
    weights.set_slots([1, 2, 3, 5])
    weights.stacked(lora_a, lora_b, (0, 1, 2, 3))
    assert sum(k[0] == (0, 1, 2, 3) for k in weights.layer_entries(lora_a)) == 1  # the stale fill is gone
    got = y.clone()
    GroupedLoRA("fused", weights).linear(got, x, idx, lora_a, lora_b, 1.0, (64,))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_packed_compact_copies_count_in_the_budget() -> None:
    """A compact entry's oneDNN-packed copies (made on its ``pack_at_use``-th use) count in the byte budget from
    then on, leave it with the entry, and a pack beyond the budget starts every cache over; where oneDNN packs
    nothing (bf16 on an AVX2 CPU) nothing is counted."""
    from vllm import _custom_ops as ops

    from serving.engines.cpu_lora.weights import nbytes

    if not getattr(ops, "_supports_onednn", False):
        pytest.skip("this vLLM build has no oneDNN GEMM: nothing is packed")
    *_, lora_a, lora_b = _data(8, 64, 16, (32, 32), 4, "mixed", dtype=torch.bfloat16, seed=2)
    weights = SlotWeights(pack_at_use=2)
    weights.set_slots([1, 2, 3, 4])
    entry = weights.compact(lora_a, lora_b, (0, 1, 2, 3))
    plain = weights.stacked_bytes
    assert plain == nbytes(entry) and entry.owner is not None  # the masked form: the one that packs
    entry.matrices()
    assert entry.packed is None and weights.stacked_bytes == plain
    entry.matrices()
    if (
        entry.packed is None
    ):  # oneDNN refuses this dtype on this ISA (bf16 under AVX2): torch's matmul serves it
        assert entry.packed_bytes == 0 and weights.stacked_bytes == plain
        return
    assert entry.packed_bytes > 0
    assert weights.stacked_bytes == plain + entry.packed_bytes == nbytes(entry)
    weights.set_slots([1, 2, 3, 5])  # slot 3 refilled: the stale entry goes, packed copies and all
    fresh = weights.compact(lora_a, lora_b, (0, 1, 2, 3))
    assert weights.stacked_bytes == nbytes(fresh) == plain
    tight = SlotWeights(pack_at_use=1, budget_bytes=plain + 1)
    tight.set_slots([1, 2, 3, 4])
    small = tight.compact(lora_a, lora_b, (0, 1, 2, 3))
    small.matrices()  # its packed copies would pass the budget: every cache starts over
    assert tight.stacked_bytes == 0 and not tight.layer_entries(lora_a)
    small.matrices()  # no longer cached: a plan may still run it, nothing is counted
    assert tight.stacked_bytes == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_slot_rank_reads_bit_patterns_right(dtype: torch.dtype) -> None:
    """The rank scan compares bit patterns: tiny values, negative values and -0.0 (a zero) all read right."""
    a = torch.zeros(3, 1, 16, 8, dtype=dtype)
    a[0, 0, 5, 3] = -torch.finfo(dtype).tiny  # a negative subnormal-ish value is nonzero
    a[1, 0, :9] = -0.0  # negative zeros everywhere are still zeros
    a[1, 0, 2, 1] = 1.0
    a[2, 0, 15, 7] = -2.0
    weights = SlotWeights()
    assert [weights.rank(a, s) for s in range(3)] == [6, 3, 16]


def _refused(entry) -> bool:  # type: ignore[no-untyped-def]
    """Whether oneDNN refuses to pack this entry's matrices (bf16 on a CPU without AVX-512: torch serves)."""
    from serving.engines.cpu_lora.weights import _pack

    return _pack(entry.a, entry.b) is None


def test_compact_runs_batches_on_one_entry_of_the_held_slots() -> None:
    """The compact arithmetic stacks every slot holding a layer's weights into one entry (packed on its 8th use)
    that serves every batch whose own slots cover at least half its rows: batches of other slot sets — prefill
    chunks among them, on their slot's blocks of it, never counted twice — stay as close to float64 as the
    per-set entries; the entry is built once, a refilled slot's block is rewritten in place (the same bytes as a new
    build, packed again later); a batch of one small slot beside larger idle ones takes its own set's entry."""
    from vllm import _custom_ops as ops

    from serving.engines.cpu_lora.weights import HELD_PACK_AT_USE, nbytes

    slices = (24, 8, 8)
    *_, lora_a, lora_b = _data(1, 48, 16, slices, 4, "one", dtype=torch.bfloat16, seed=7)
    weights = SlotWeights()
    weights.set_slots([1, 2, 3, 4])
    held = GroupedLoRA(weights=weights, force="compact")
    g = torch.Generator().manual_seed(3)
    batches = [[0, 0, 0, 0, 0, 1, 2, 3, -1], [3, 2, 1, 0], [1, 2, -1, 3], [2, 2, 0, -1]]

    def check(grouped: GroupedLoRA, idx: torch.Tensor) -> None:
        x = torch.randn(len(idx), 48, generator=g).bfloat16()
        y = torch.randn(len(idx), sum(slices), generator=g).bfloat16()
        got, own = y.clone(), y.clone()
        grouped.linear(got, x, idx, lora_a, lora_b, 0.5, slices)
        GroupedLoRA(weights=SlotWeights(held_max_cols=0), force="compact").linear(
            own, x, idx, lora_a, lora_b, 0.5, slices
        )
        exact = float64_reference(y, x, idx, lora_a, lora_b, 0.5, slices)
        assert torch.equal(got[idx < 0], y[idx < 0])
        assert _error(got, exact) <= 2 * _error(own, exact) + 1e-3  # within bf16 rounding of the per-set path
        torch.testing.assert_close(got.double(), exact, rtol=0.05, atol=0.05)

    def entries(slots: tuple[int, ...]) -> list:  # type: ignore[type-arg]
        return [e for k, e in weights.layer_entries(lora_a).items() if k[0] == slots]

    for use in range(HELD_PACK_AT_USE):  # the batches in turn, up to the use that packs the entry
        check(held, torch.tensor(batches[use % len(batches)]))
    (entry,) = entries((0, 1, 2, 3))  # one entry for every batch, no per-set entries
    assert {k[0] for k in weights.layer_entries(lora_a)} == {(0, 1, 2, 3)}  # prefill chunks on their blocks
    assert entry.owner is not None
    assert entry.uses == entry.pack_at_use == HELD_PACK_AT_USE  # packed on this use
    assert entry.packed is not None or not getattr(ops, "_supports_onednn", False) or _refused(entry)
    check(held, torch.tensor([1] * 4 + [3] * 5))  # two prefill chunks, no decodes: both on their blocks
    assert list(weights.layer_entries(lora_a).values()) == [entry] and entry.uses == HELD_PACK_AT_USE
    for a, b in zip(lora_a, lora_b, strict=True):  # another adapter in slot 2, of rank 2 (one row block)
        a[2, 0, 2:] = 0
        b[2, 0, :, 2:] = 0
        a[2].mul_(-2)
    weights.set_slots([1, 2, 5, 4])
    check(held, torch.tensor(batches[1]))
    (fresh,) = entries((0, 1, 2, 3))
    assert fresh is entry and fresh.uses == 1 and fresh.packed is None  # slot 2's block rewritten in place
    anew = SlotWeights()
    anew.set_slots([1, 2, 5, 4])
    built = anew.compact(lora_a, lora_b, (0, 1, 2, 3), masked=True)
    assert torch.equal(built.a, fresh.a) and torch.equal(built.b, fresh.b)  # as if built anew
    assert weights.stacked_bytes == sum(nbytes(e) for e in weights.layer_entries(lora_a).values())
    check(held, torch.tensor([2, 2, -1]))  # slot 2: 3 x 8 rows, against the held 4 x 48
    assert len(entries((2,))) == 1 and fresh.uses == 1
    every = (0, 1, 2, 3)  # 4 slots x 48 rows, (48 + 40) columns, bf16, packed copies: 67,584 bytes
    assert SlotWeights(budget_bytes=64 * 67_584).held(lora_a, lora_b, every) == every
    assert SlotWeights(budget_bytes=64 * 67_584 - 64).held(lora_a, lora_b, every) is None


def test_a_refill_that_outgrows_its_block_rebuilds_the_held_entry() -> None:
    """A slot refilled with more rows than its block in the held entry's layout (every slot was rank 8) gets a
    new entry laid out for them, its old one released; batches stay as close to float64 as the per-set path."""
    from serving.engines.cpu_lora.weights import nbytes

    slices = (24, 8, 8)
    *_, lora_a, lora_b = _data(1, 48, 16, slices, 4, "one", dtype=torch.bfloat16, seed=8)
    full = [(a[1].clone(), b[1].clone()) for a, b in zip(lora_a, lora_b, strict=True)]
    for a, b in zip(lora_a, lora_b, strict=True):  # every slot rank 8: blocks of 8 rows per slice
        a[:, 0, 8:] = 0
        b[:, 0, :, 8:] = 0
    weights = SlotWeights()
    weights.set_slots([1, 2, 3, 4])
    grouped = GroupedLoRA(weights=weights, force="compact")
    g = torch.Generator().manual_seed(4)
    idx = torch.tensor([3, 2, 1, 0])

    def run() -> None:
        x = torch.randn(4, 48, generator=g).bfloat16()
        y = torch.randn(4, sum(slices), generator=g).bfloat16()
        got = y.clone()
        grouped.linear(got, x, idx, lora_a, lora_b, 0.5, slices)
        torch.testing.assert_close(
            got.double(), float64_reference(y, x, idx, lora_a, lora_b, 0.5, slices), rtol=0.05, atol=0.05
        )

    run()
    (entry,) = weights.layer_entries(lora_a).values()
    assert entry.layout == (8, 8, 8)
    for (a, b), (a1, b1) in zip(zip(lora_a, lora_b, strict=True), full, strict=True):  # slot 1: rank 16
        a[1], b[1] = a1, b1
    weights.set_slots([1, 6, 3, 4])
    run()
    (fresh,) = weights.layer_entries(lora_a).values()
    assert fresh is not entry and fresh.layout == (16, 16, 16)
    assert weights.stacked_bytes == nbytes(fresh)


def test_the_per_token_form_is_made_once_for_every_held_slot() -> None:
    """Beyond the masked form's rows the fused arithmetic's per-token weights are made once for every slot
    holding the layer's weights: a batch of some of them gets a copy of their blocks (the bytes of a set of its
    own), a refill rewrites that slot's blocks in place (the bytes of a new build); batches stay exact."""
    slices = (32, 16, 16)
    y, x, idx, lora_a, lora_b = _data(12, 64, 16, slices, 4, "mixed", dtype=torch.bfloat16, seed=9)

    def built(ids: list[int], slots: tuple[int, ...]) -> Any:
        own = SlotWeights(dense_max_cols=0)
        own.set_slots(ids)
        return own._build(lora_a, lora_b, slots)

    def same(got: Any, want: Any) -> bool:
        return torch.equal(got[0], want[0]) and all(
            torch.equal(g, w) for g, w in zip(got[1], want[1], strict=True)
        )

    weights = SlotWeights(dense_max_cols=0)
    weights.set_slots([1, 2, 3, 4])
    every = weights.stacked(lora_a, lora_b, (0, 1, 2, 3))
    assert same(weights.stacked(lora_a, lora_b, (1, 3)), built([1, 2, 3, 4], (1, 3)))
    assert [k[0] for k in weights.layer_entries(lora_a)] == [(0, 1, 2, 3)]  # nothing built for the subset
    for a, b in zip(lora_a, lora_b, strict=True):  # another adapter in slot 2, of rank 8
        a[2, 0, 8:] = 0
        b[2, 0, :, 8:] = 0
        a[2].mul_(-2)
    weights.set_slots([1, 2, 7, 4])
    again = weights.stacked(lora_a, lora_b, (0, 1, 2, 3))
    assert again is every and same(again, built([1, 2, 7, 4], (0, 1, 2, 3)))
    got = y.clone()
    GroupedLoRA("fused", weights).linear(got, x, idx, lora_a, lora_b, 1.0, slices)
    want = vllm_reference(y, x, idx, lora_a, lora_b, 1.0, slices)
    torch.testing.assert_close(got.double(), want.double(), rtol=0.02, atol=0.02)
