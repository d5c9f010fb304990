"""The grouped CPU LoRA path against vLLM's reference ops (the per-token gather, with index -1 masked), bit
for bit, and against a float64 per-token reference: random shapes, several slices, mixed slots, tokens
without an adapter, real ranks below vLLM's padded rank, the demo model's shapes."""

from __future__ import annotations

import pytest
import torch

from serving.engines import lora_plugin as fix
from serving.engines.cpu_lora import grouped_lora_linear, slot_groups


def reference_vllm(y, x, idx, lora_a, lora_b, scale, slices):  # type: ignore[no-untyped-def]
    """vLLM's CPU add_lora_linear with the masked bgmv ops: fp32 shrink buffer, expand in y's dtype."""
    out = y.clone()
    offset = 0
    for a, b, size in zip(lora_a, lora_b, slices, strict=True):
        buf = torch.zeros(x.shape[0], a.shape[-2], dtype=torch.float32)
        fix.bgmv_shrink(x, a, buf, idx, scale)
        fix.bgmv_expand_slice(buf, b, out, idx, offset, size, add_inputs=True)
        offset += size
    return out


def reference_f64(y, x, idx, lora_a, lora_b, scale, slices):  # type: ignore[no-untyped-def]
    out = y.double().clone()
    for t, s in enumerate(idx.tolist()):
        if s < 0:
            continue
        offset = 0
        for a, b, size in zip(lora_a, lora_b, slices, strict=True):
            h = scale * (x[t].double() @ a[s, 0].double().T)
            out[t, offset : offset + size] += h @ b[s, 0].double().T
            offset += size
    return out


CASES = [  # tokens, in, rank, slices, slots, indices pattern
    (1, 32, 8, (16,), 2, "one"),
    (7, 48, 4, (24, 8, 8), 3, "mixed"),
    (33, 64, 16, (64,), 4, "mixed"),
    (12, 40, 8, (20, 20), 2, "all-none"),
    (9, 40, 8, (20, 20), 2, "all-same"),
    (6, 32, 1, (16, 16), 3, "mixed"),  # max_lora_rank 1: not a whole row block, the per-token fallback
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}tok-{len(c[3])}slices-{c[5]}" for c in CASES])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_grouped_matches_vllm_reference(case: tuple, dtype: torch.dtype, scale: float) -> None:
    y, x, idx, lora_a, lora_b = _data(*case, dtype=dtype)
    want_vllm = reference_vllm(y, x, idx, lora_a, lora_b, scale, case[3])
    want_f64 = reference_f64(y, x, idx, lora_a, lora_b, scale, case[3])
    none = idx < 0
    for indices in (None, idx):  # one shrink/expand per slot; one masked pair for the whole batch
        got = y.clone()
        grouped_lora_linear(got, x, slot_groups(idx), lora_a, lora_b, scale, case[3], indices=indices)
        assert torch.equal(got, want_vllm)  # vLLM's arithmetic, bit for bit
        assert torch.equal(got[none], y[none])  # rows without an adapter keep their values
        tolerance = 1e-5 if dtype == torch.float32 else 0.05  # and both are that close to float64
        torch.testing.assert_close(got.double(), want_f64, rtol=tolerance, atol=tolerance)
    lora_effect = (want_f64 - y.double()).abs().max().item()
    assert none.all() or lora_effect > 0.05  # the adapters do move the rows they apply to


def _padded(slots, r_max, hidden, slices, ranks, g):  # type: ignore[no-untyped-def]
    """vLLM's stacked buffers: each slot's adapter at its real rank, zero-padded to r_max (rank 0: a slot
    whose adapter does not target this module)."""
    lora_a = tuple(torch.zeros(slots, 1, r_max, hidden, dtype=torch.bfloat16) for _ in slices)
    lora_b = tuple(torch.zeros(slots, 1, size, r_max, dtype=torch.bfloat16) for size in slices)
    for slot, rank in enumerate(ranks):
        for a, b in zip(lora_a, lora_b, strict=True):
            a[slot, 0, :rank] = torch.randn(rank, hidden, generator=g).div(hidden**0.5)
            b[slot, 0, :, :rank] = torch.randn(b.shape[2], rank, generator=g).div(max(rank, 1) ** 0.5)
    return lora_a, lora_b


DEMO_MODULES = [  # SmolLM2-135M: (input size, output slices) of qkv, o, gate_up, down
    (576, (576, 192, 192)),
    (576, (576,)),
    (576, (1536, 1536)),
    (1536, (576,)),
]


@pytest.mark.parametrize("dense_max", [0, 256, 1 << 20], ids=["own-rows", "default", "all-masked"])
@pytest.mark.parametrize("seed", range(6))
def test_bit_identical_on_the_demo_models_shapes(
    seed: int, dense_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo model's layer shapes in bf16, up to 8 slots with real ranks that are not multiples of
    anything (1..64 inside vLLM's 64), decode-sized and prefill-sized batches mixing slots and no adapter:
    every element equals vLLM's per-token ops. Includes the serving shapes: one decode token per slot (the
    stacked weights are used as they are), two decodes sharing a slot (repeated), and a prefill chunk among
    decodes (that slot runs alone); the batched slots take either form (masked over all rows, own rows)."""
    import serving.engines.cpu_lora as cpu_lora

    monkeypatch.setattr(cpu_lora, "_DENSE_MAX_COLS", dense_max)
    g = torch.Generator().manual_seed(seed)
    slots = 8
    serving = {
        "decode": torch.randperm(slots, generator=g),
        "shared": torch.tensor([3, 0, 5, 3, 1, -1, 7, 2]),
        "prefill": torch.cat([torch.full((40,), 6), torch.tensor([0, -1, 1, 2, 2, 3, 4, 5, 7])]),
    }
    for hidden, slices in DEMO_MODULES:
        ranks = torch.randint(1, 65, (slots,), generator=g).tolist()
        ranks[seed % slots] = 64  # one slot at the full padded rank
        lora_a, lora_b = _padded(slots, 64, hidden, slices, ranks, g)
        shapes = [*((1, 1), (5, 2), (32, 4), (32, 8), (300, 8)), *serving.values()]
        for shape in shapes:
            if isinstance(shape, tuple):
                tokens, present = shape
                idx = torch.randint(-1, present, (tokens,), generator=g)
            else:
                idx, tokens, present = shape, shape.shape[0], slots
            x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
            y = torch.randn(tokens, sum(slices), generator=g).to(torch.bfloat16)
            scale = float(torch.rand(1, generator=g)) + 0.25
            want = reference_vllm(y, x, idx, lora_a, lora_b, scale, slices)
            got = y.clone()
            grouped_lora_linear(got, x, slot_groups(idx), lora_a, lora_b, scale, slices, indices=idx)
            assert torch.equal(got, want), (hidden, slices, tokens, present, ranks)


def test_plain_gemm_would_not_be_bit_identical() -> None:
    """Why the shrink runs as a per-token batched gemv: the obvious single GEMM sums in another order and
    differs from vLLM's per-token einsum (if this starts passing, the fused path could be simpler)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 576, generator=g).to(torch.bfloat16).float()
    a = torch.randn(24, 576, generator=g).to(torch.bfloat16).float()
    vllm = torch.einsum("bi, boi -> bo", x, a.unsqueeze(0).expand(32, -1, -1).contiguous())
    assert not torch.equal(x @ a.T, vllm)
    from serving.engines.cpu_lora import _shrink

    assert torch.equal(_shrink(x.to(torch.bfloat16), a), vllm)


def test_slot_groups() -> None:
    assert slot_groups(torch.tensor([2, 2, 2])) == [(2, None)]
    assert slot_groups(torch.tensor([-1, -1])) == []
    groups = dict(slot_groups(torch.tensor([0, -1, 1, 0])))
    assert set(groups) == {0, 1}
    assert groups[0].tolist() == [0, 3] and groups[1].tolist() == [2]


def test_plugin_patches_only_the_cpu_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA vLLM runs PunicaWrapperGPU and its Triton ops: the plugin leaves them as they are, and
    RMN_CPU_LORA=vllm takes the grouped path out again."""
    import warnings

    from serving.engines import cpu_lora

    with warnings.catch_warnings():  # vLLM's GPU modules use torch.jit.script_method (deprecated in torch)
        warnings.simplefilter("ignore", DeprecationWarning)
        from vllm.lora.punica_wrapper import punica_cpu, punica_gpu

    gpu_methods = dict(vars(punica_gpu.PunicaWrapperGPU))
    monkeypatch.setenv("RMN_CPU_LORA", "grouped")
    fix.register()
    assert cpu_lora.installed() and getattr(punica_cpu.PunicaWrapperCPU, "_rmn_grouped", False)
    assert dict(vars(punica_gpu.PunicaWrapperGPU)) == gpu_methods
    monkeypatch.setenv("RMN_CPU_LORA", "vllm")
    fix.register()
    assert not cpu_lora.installed()
    monkeypatch.setenv("RMN_CPU_LORA", "grouped")
    fix.register()
    assert cpu_lora.installed()


def test_grouped_uses_each_slots_real_rank_and_skips_untouched_slices() -> None:
    """vLLM zero-pads adapters to max_lora_rank and zero-fills slices an adapter does not target: the grouped
    path must give the same result from the nonzero part alone (and know the ranks)."""
    import serving.engines.cpu_lora as cpu_lora

    y, x, idx, lora_a, lora_b = _data(11, 48, 16, (24, 8, 8), 3, "mixed", dtype=torch.float32, seed=3)
    # slot 0: rank 4 (rows 4.. are padding); slot 1: rank 16, but no weights on the middle slice (like k_proj
    # of a q/v adapter); slot 2: nothing on any slice (an adapter of other modules)
    for a, b in zip(lora_a, lora_b, strict=True):
        a[0, 0, 4:] = 0
        b[0, 0, :, 4:] = 0
        a[2], b[2] = 0, 0
    lora_a[1][1], lora_b[1][1] = 0, 0
    want = reference_f64(y, x, idx, lora_a, lora_b, 0.5, (24, 8, 8))
    for indices in (None, idx):
        got = y.clone()
        grouped_lora_linear(got, x, slot_groups(idx), lora_a, lora_b, 0.5, (24, 8, 8), indices=indices)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert [cpu_lora.slot_rank(a, 0) for a in lora_a] == [4, 4, 4]
    assert [cpu_lora.slot_rank(a, 1) for a in lora_a] == [16, 0, 16]
    assert [cpu_lora.slot_rank(a, 2) for a in lora_a] == [0, 0, 0]
    # a slot refilled by vLLM (after its activate_adapter): its rank is read again
    lora_a[0][2, 0, :6] = 1.0
    assert cpu_lora.slot_rank(lora_a[0], 2) == 0  # cached until the next activation
    cpu_lora.refilled(2)
    assert cpu_lora.slot_rank(lora_a[0], 2) == 6


def test_stacked_weights_stay_within_their_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stacked fp32 copies are a cache: bounded per layer (slot sets kept) and across layers (bytes); a
    refilled slot's stale copy is dropped, and answers stay right after the cache starts over."""
    import serving.engines.cpu_lora as cpu_lora

    y, x, idx, lora_a, lora_b = _data(33, 64, 16, (64,), 4, "mixed", dtype=torch.float32, seed=5)
    one = cpu_lora._nbytes(cpu_lora._stacked(lora_a, lora_b, (0, 1, 2, 3)))
    monkeypatch.setattr(cpu_lora, "_FUSED_BUDGET", cpu_lora._FUSED["bytes"] + 2 * one)
    want = reference_f64(y, x, idx, lora_a, lora_b, 1.0, (64,))
    for slots in [(0,), (1,), (2,), (3,), (0, 1), (1, 2), (0, 1, 2, 3)]:
        cpu_lora._stacked(lora_a, lora_b, slots)
        assert len(lora_a[0]._rmn_fused) <= cpu_lora._BATCHES_KEPT
        assert cpu_lora._FUSED["bytes"] <= cpu_lora._FUSED_BUDGET
    cpu_lora.refilled(3)
    cpu_lora._stacked(lora_a, lora_b, (0, 1, 2, 3))
    assert sum(k[0] == (0, 1, 2, 3) for k in lora_a[0]._rmn_fused) == 1  # the stale fill is gone
    got = y.clone()
    grouped_lora_linear(got, x, slot_groups(idx), lora_a, lora_b, 1.0, (64,), indices=idx)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_slot_rank_reads_bit_patterns_right(dtype: torch.dtype) -> None:
    """The rank scan compares bit patterns: tiny values, negative values and -0.0 (a zero) all read right."""
    import serving.engines.cpu_lora as cpu_lora

    a = torch.zeros(3, 1, 16, 8, dtype=dtype)
    a[0, 0, 5, 3] = -torch.finfo(dtype).tiny  # a negative subnormal-ish value is nonzero
    a[1, 0, :9] = -0.0  # negative zeros everywhere are still zeros
    a[1, 0, 2, 1] = 1.0
    a[2, 0, 15, 7] = -2.0
    assert [cpu_lora.slot_rank(a, s) for s in range(3)] == [6, 3, 16]


def test_probe_passes_here_and_a_failing_probe_takes_the_per_token_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The install-time probe finds the fused path bit-identical on this machine; where it would not be (another
    CPU's MKL/oneDNN), every call goes through the per-token arithmetic and stays bit-identical."""
    import serving.engines.cpu_lora as cpu_lora

    monkeypatch.setattr(cpu_lora, "_FUSED_EXACT", {})
    assert cpu_lora.probe() is True
    calls: list[int] = []
    original = cpu_lora._exact_linear
    monkeypatch.setattr(cpu_lora, "_exact_linear", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(cpu_lora, "_FUSED_EXACT", {"ok": False})
    y, x, idx, lora_a, lora_b = _data(33, 64, 16, (64,), 4, "mixed", dtype=torch.bfloat16, seed=7)
    want = reference_vllm(y, x, idx, lora_a, lora_b, 0.5, (64,))
    got = y.clone()
    grouped_lora_linear(got, x, slot_groups(idx), lora_a, lora_b, 0.5, (64,), indices=idx)
    assert calls and torch.equal(got, want)
