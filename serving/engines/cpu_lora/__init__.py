"""Grouped CPU LoRA for vLLM's linear layers and lm_head: a few batched ops per layer instead of a per-token
gather, with vLLM's bits where a probe on this CPU shows it and an error bound against float64 elsewhere.

vLLM's CPU punica wrapper applies LoRA with pure-torch ops that gather a (rank x hidden) matrix PER TOKEN
(``lora_a[indices]``; for lm_head a vocab x rank matrix per sequence) and contract it with an einsum; on CPU
that costs several times the base layer's own matmul. Here the tokens of a batch are grouped by slot once
per step and, per layer, each slot's weights are cut to its REAL rank and kept in fp32 (``P_s``, cached until
vLLM puts another adapter in the slot). Then:

    a slot with many tokens (a prefill chunk)    h = x_s @ P_s.T ; y[rows_s, slice_i] += round_y(scale h) @ B_si.T
    the slots with few tokens each (decodes),    stacked per slot set: A [S, R, in], B_i [S, size_i, R_i]
      up to 256 stacked rows:  h = x @ A.T over all S*R rows, masked to each token's own slot, one expand per slice
      beyond:                  h_t = x_t @ A[slot(t)].T (a view when every slot has one token), per-token expand

Rows whose slot is -1 (requests without an adapter) get exactly zero, as with vLLM's masked ops.

That is the fused arithmetic, written in vLLM's order of sums. The compact arithmetic (:func:`.arithmetic.compact`)
drops that order for fewer ops: the slot set's rows in y's dtype (bf16:
half the bytes), the expand of every slice in ONE matmul over all output columns, ``h = x @ A.T`` masked to each
token's slot and ``y += h @ B.T`` (two matmuls a layer; oneDNN's packed GEMM, the one vLLM's own linear layers
use, once a slot set has recurred 16 times); a slot set beyond 256 stacked rows (many compositions at once, sets
that change every few steps) takes the fused per-token form instead, whose per-slot parts outlive the sets. Never
vLLM's bits; its error against float64 measured per shape like the fused one's.

Exactness is measured, not assumed: the shrink runs vLLM's per-token gemv (a ``bmm`` with one token per batch
over shared rows) and each slot's rows are rounded up to whole MKL row blocks, so on the development CPUs
(AMD Zen 4, AVX-512 BF16) the fused path gives vLLM's bits at every shape tested. But oneDNN and MKL choose
their blocking per ISA, shape and batch, and on Intel AMX, or with ``ONEDNN_MAX_CPU_ISA=AVX2`` or
``AVX512_CORE``, a matmul over many tokens sums in another order at some token counts (even vLLM's own einsum
over a slot's tokens differs from the same einsum over the whole batch there). So each layer shape is probed
once (:mod:`.probe`: token counts up to the batch limit, several slot mixes, both layouts, the error of both
against float64). The ``grouped`` mode (the default) applies the grouped arithmetic to a layer where it gave
vLLM's bits, and also where it did not but its error against float64 stayed within 2x vLLM's own (bounded,
not bit-identical: on those CPUs falling back to vLLM's per-token ops would cost most of the speed); the
``exact`` mode keeps vLLM's bits everywhere (vLLM's own ops on the other layers); the ``compact`` mode probes
the compact arithmetic too and serves every layer within the same bound with it (never vLLM's bits);
``fused`` applies the fused arithmetic without a probe (benchmarks). The verdicts are logged and
reported (:func:`serving.engines.cpu_lora.wrapper.worker_reports`, the engine's ``stats``, the
``rmn_cpu_lora_layer_shapes`` gauge). Token counts between the probed ones are not proven bit-identical; the
error bound is asserted on every CPU (tests/unit/test_cpu_lora_grouped.py, also under ISA caps).

Layout: :mod:`.weights` (slot weights and their caches), :mod:`.arithmetic` (the ops), :mod:`.grouped` (the
per-wrapper object), :mod:`.probe` (the verdicts), :mod:`.wrapper` (the vLLM ``PunicaWrapperCPU`` subclass;
imports vLLM).
"""

from __future__ import annotations

from serving.engines.cpu_lora.arithmetic import slot_groups
from serving.engines.cpu_lora.grouped import GroupedLoRA, Mode
from serving.engines.cpu_lora.weights import SlotWeights

__all__ = [
    "GroupedLoRA",
    "Mode",
    "SlotWeights",
    "install",
    "installed",
    "mode",
    "set_mode",
    "slot_groups",
    "uninstall",
]


def set_mode(mode: str) -> bool:
    """Select the grouped wrapper for LoRA managers built from now on and set the mode every grouped wrapper
    runs (``grouped``; ``exact``: vLLM's bits on every layer; ``compact``: the compact arithmetic first;
    ``vllm``: vLLM's own ops; ``fused``: the fused arithmetic without a probe, for benchmarks); False in a vLLM
    without a CPU wrapper (nothing to do)."""
    if mode not in ("grouped", "exact", "fused", "compact", "vllm"):
        raise ValueError(f"RMN_CPU_LORA must be grouped, exact, fused, compact or vllm, not {mode!r}")
    try:
        from serving.engines.cpu_lora import wrapper
    except ImportError:
        return False
    wrapper.select()
    wrapper.GroupedPunicaWrapperCPU.mode = mode  # type: ignore[assignment]  # one of the five, checked above
    return True


def mode() -> str:
    """The mode grouped wrappers run now."""
    from serving.engines.cpu_lora import wrapper

    return str(wrapper.GroupedPunicaWrapperCPU.mode)


def install() -> bool:
    """The grouped path (probe-decided per layer shape): ``set_mode("grouped")``."""
    return set_mode("grouped")


def uninstall() -> None:
    """vLLM's own CPU ops again (tests compare both paths in one process)."""
    set_mode("vllm")


def installed() -> bool:
    """True while grouped wrappers apply LoRA (any mode but ``vllm``)."""
    from serving.engines.cpu_lora import wrapper

    return wrapper.selected() and wrapper.GroupedPunicaWrapperCPU.mode != "vllm"
