"""One LoRA-applying object per vLLM wrapper: slot weights, the arithmetic chosen per layer shape, verdicts.

Modes:
- ``grouped`` (``engine.cpu_lora: grouped``, the default): per layer shape, the first call runs
  :func:`check_shape`. Where the grouped arithmetic was bit-identical to vLLM's ops at every probed token count
  it serves the layer with vLLM's bits; where it was not, it still serves the layer if its error against
  float64 stayed within :data:`.probe.ERROR_FACTOR` times vLLM's own (a bounded-error claim, reported per
  layer as ``identical: false, bounded: true``); only a layer over that bound goes to vLLM's own ops
  (:meth:`GroupedLoRA.linear` returns False and the wrapper runs them).
- ``exact``: vLLM's bits on every layer: the grouped arithmetic where the probe found them, vLLM's own ops
  elsewhere (slower: on a CPU whose oneDNN/MKL sum in another order, every layer; the demo model 1.4-1.9x).
- ``fused``: the grouped arithmetic for every layer without a probe (the probe's subject; benchmarks, tests).
The grouped arithmetic is the fused path for bf16 with vLLM's padded rank in whole row blocks, otherwise
vLLM's per-token einsums run per slot group (:func:`.arithmetic.exact_linear`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from serving.engines.cpu_lora.arithmetic import exact_linear, expand, shrink, slot_groups, split, together
from serving.engines.cpu_lora.probe import (
    ERROR_FACTOR,
    LayerShape,
    ShapeCheck,
    float64_reference,
    machine,
    mixes,
    padded_weights,
    token_counts,
    vllm_reference,
)
from serving.engines.cpu_lora.weights import ROW_BLOCK, SlotWeights

log = logging.getLogger("ray.serve.rmn.engine.cpu_lora")

Mode = Literal["grouped", "exact", "fused"]


class GroupedLoRA:
    """Applies ``y[:, slice_i] += scale * x @ A_i[slot].T @ B_i[slot].T`` per token's slot, grouping the
    batch's tokens by slot (no per-token gather); see the package docstring for the layouts."""

    def __init__(self, mode: Mode = "grouped", weights: SlotWeights | None = None, max_tokens: int = 512):
        self.mode: Mode = mode
        self.weights = weights or SlotWeights()
        self.max_tokens = max_tokens
        self.checks: dict[LayerShape, ShapeCheck] = {}

    # ---- the decision per layer shape ---------------------------------------------------------------
    def takes(self, check: ShapeCheck) -> bool:
        """Whether a probed shape takes the grouped arithmetic in this mode: with vLLM's bits (any mode), or
        within the error bound (``grouped``)."""
        return check.identical or (self.mode == "grouped" and check.bounded)

    def serves(self, lora_a: tuple[Any, ...], output_slices: tuple[int, ...], limit: int) -> bool:
        """Whether this layer takes the grouped arithmetic: always in ``fused`` mode; otherwise as
        :meth:`takes` decides from the probe of the layer's shape (up to ``limit`` tokens, or sequences for
        lm_head), run on its first call."""
        if self.mode == "fused":
            return True
        a = lora_a[0]
        shape = LayerShape(
            a.shape[-1], tuple(output_slices), a.shape[-2], a.shape[0], str(a.dtype).split(".")[-1]
        )
        check = self.checks.get(shape)
        if check is None:
            check = self.checks[shape] = check_shape(shape, limit)
            log.info(
                "grouped CPU LoRA on %s: %s for %s (probed %d token counts in %.1f s; error vs float64 %.3g, "
                "vLLM's own %.3g)",
                machine()["cpu"],
                self.verdict(check),
                shape,
                len(check.tokens),
                check.seconds,
                check.fused_error,
                check.vllm_error,
            )
        return self.takes(check)

    def verdict(self, check: ShapeCheck) -> str:
        """How this mode serves a probed shape, in words (the log line's)."""
        if check.identical:
            return "grouped arithmetic, bit-identical to vLLM's ops"
        differed = f"differed from vLLM's bits at {check.mismatched[:8]} tokens"
        if self.takes(check):
            return f"grouped arithmetic, error within {ERROR_FACTOR:g}x vLLM's own ({differed})"
        why = "engine.cpu_lora: exact" if check.bounded else f"its error over {ERROR_FACTOR:g}x vLLM's own"
        return f"vLLM's own ops (the grouped arithmetic {differed}; {why})"

    def report(self) -> dict[str, Any]:
        """The mode, the machine and the verdict per layer shape seen so far: each layer's probe with the
        ``arithmetic`` that serves it (``grouped`` or ``vllm``); ``bit_identical``: every layer gives vLLM's
        bits (None when nothing was probed: ``fused`` makes no claim); ``error_bound``: the bound a layer
        without them is held to, against float64, as a multiple of vLLM's own error."""
        layers = [
            {**c.as_dict(), "arithmetic": "grouped" if self.takes(c) else "vllm"}
            for c in self.checks.values()
        ]
        return {
            "mode": self.mode,
            "machine": machine(),
            "layers": layers,
            "bit_identical": None
            if self.mode == "fused"
            else all(c["identical"] or c["arithmetic"] == "vllm" for c in layers),
            "error_bound": ERROR_FACTOR,
        }

    # ---- the arithmetic -----------------------------------------------------------------------------
    def linear(
        self,
        y: Any,
        x: Any,
        indices: Any,
        lora_a: tuple[Any, ...],
        lora_b: tuple[Any, ...],
        scale: float,
        output_slices: tuple[int, ...],
        groups: list[tuple[int, Any]] | None = None,
        limit: int | None = None,
    ) -> bool:
        """Add the LoRA of each token's slot (``indices``, -1: none) to ``y`` in place and return True, or
        return False (``y`` untouched) where the layer's shape is left to vLLM's own ops (:meth:`serves`).
        ``groups`` is :func:`slot_groups` of ``indices`` when the caller already has it; ``limit``: the most
        rows a call of this layer can have (the probe's largest token count; ``max_tokens`` when None)."""
        import torch

        x2 = x.reshape(-1, x.shape[-1])
        y2 = y.view(-1, y.shape[-1])
        if not self.serves(lora_a, output_slices, limit or self.max_tokens):
            return False
        groups = slot_groups(indices) if groups is None else groups
        if not groups:
            return True
        if y2.dtype != torch.bfloat16 or lora_a[0].shape[-2] % ROW_BLOCK:  # the fused expand needs both
            exact_linear(y2, x2, groups, lora_a, lora_b, scale, output_slices, self.weights.rank)
            return True
        weights = self.weights
        if len(groups) == 1 and groups[0][1] is None:  # every token has the same adapter
            part = weights.part(lora_a, lora_b, groups[0][0])
            if part is not None:
                expand(y2, shrink(x2, part[0]), part[1], output_slices, scale, None)
            return True
        alone, batched = split(groups, lambda slot: weights.part(lora_a, lora_b, slot) is not None)
        if batched:
            stacked = weights.stacked(lora_a, lora_b, tuple(s for s, _ in batched))
            together(y2, x2, indices, batched, bool(alone), stacked, scale, output_slices)
        for slot, rows in alone:  # one shrink/expand on the slot's own rows, its weights shared by its tokens
            part = weights.part(lora_a, lora_b, slot)
            expand(y2, shrink(x2.index_select(0, rows), part[0]), part[1], output_slices, scale, rows)
        return True


def check_shape(shape: LayerShape, max_tokens: int, seed: int = 0) -> ShapeCheck:
    """Run the fused path (both batched layouts) against vLLM's ops and float64 for ``shape``."""
    import torch

    started = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randint(1, shape.r_max + 1, (shape.slots,), generator=g).tolist()
    ranks[0] = shape.r_max
    lora_a, lora_b = padded_weights(shape, ranks, g)
    check = ShapeCheck(shape=shape, tokens=token_counts(max_tokens))
    dtype = getattr(torch, shape.dtype)
    fused = [GroupedLoRA(mode="fused", weights=SlotWeights(dense_max_cols=d)) for d in (0, 1 << 30)]
    for tokens in check.tokens:
        for idx in mixes(tokens, shape.slots, g):
            x = torch.randn(tokens, shape.hidden, generator=g).to(dtype)
            y = torch.randn(tokens, sum(shape.slices), generator=g).to(dtype)
            want = vllm_reference(y, x, idx, lora_a, lora_b, 0.5, shape.slices)
            exact = float64_reference(y, x, idx, lora_a, lora_b, 0.5, shape.slices)
            check.vllm_error = max(check.vllm_error, float((want.double() - exact).abs().max()))
            for grouped in fused:
                got = y.clone()
                grouped.linear(got, x, idx, lora_a, lora_b, 0.5, shape.slices)
                check.fused_error = max(check.fused_error, float((got.double() - exact).abs().max()))
                if not torch.equal(got, want) and tokens not in check.mismatched:
                    check.mismatched.append(tokens)
    check.seconds = round(time.perf_counter() - started, 3)
    return check
