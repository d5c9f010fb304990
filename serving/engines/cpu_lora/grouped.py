"""One LoRA-applying object per vLLM wrapper: slot weights, the arithmetic chosen per layer shape, verdicts.

Modes:
- ``grouped`` (``engine.cpu_lora: grouped``, the default): per layer shape, the first call runs
  :func:`check_shape`. Where the grouped (fused) arithmetic was bit-identical to vLLM's ops at every probed token
  count it serves the layer with vLLM's bits; where it was not, it still serves the layer if its error against
  float64 stayed within :data:`.probe.ERROR_FACTOR` times vLLM's own (a bounded-error claim, reported per
  layer as ``identical: false, bounded: true``); only a layer over that bound goes to vLLM's own ops
  (:meth:`GroupedLoRA.linear` returns False and the wrapper runs them).
- ``compact``: the probe also measures the compact arithmetic, which then serves every layer where its error is
  within the same bound (throughput first, never vLLM's bits: greedy text may part from vLLM's at near-ties);
  as ``grouped`` elsewhere.
- ``exact``: vLLM's bits on every layer: the grouped arithmetic where the probe found them, vLLM's own ops
  elsewhere (slower: on a CPU whose oneDNN/MKL sum in another order, every layer; the demo model 1.4-1.9x).
- ``fused``: the grouped arithmetic for every layer without a probe (the probe's subject; benchmarks, tests);
  ``force=`` one arithmetic likewise.
The grouped arithmetic is the fused path for bf16 with vLLM's padded rank in whole row blocks, otherwise
vLLM's per-token einsums run per slot group (:func:`.arithmetic.exact_linear`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from serving.engines.cpu_lora.arithmetic import (
    Op,
    compact,
    compact_block,
    exact_linear,
    expand,
    keep_own,
    shrink,
    slot_groups,
    split,
    together,
)
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
from serving.engines.cpu_lora.weights import HELD_PACK_AT_USE, ROW_BLOCK, SlotWeights

log = logging.getLogger("ray.serve.rmn.engine.cpu_lora")

Mode = Literal["grouped", "exact", "fused", "compact"]
Arithmetic = Literal["compact", "grouped", "vllm"]


class GroupedLoRA:
    """Applies ``y[:, slice_i] += scale * x @ A_i[slot].T @ B_i[slot].T`` per token's slot, grouping the
    batch's tokens by slot (no per-token gather); see the package docstring for the layouts."""

    def __init__(
        self,
        mode: Mode = "grouped",
        weights: SlotWeights | None = None,
        max_tokens: int = 512,
        force: Arithmetic | None = None,
    ):
        self.mode: Mode = mode
        self.force = force  # this arithmetic on every layer, no probe (the probe's own runs, tests)
        self.weights = weights or SlotWeights()
        self.max_tokens = max_tokens
        self.checks: dict[LayerShape, ShapeCheck] = {}
        # id(a layer's first A buffer) -> ((batch, mode, force), its plan): see linear's ``batch``
        self._plans: dict[int, tuple[Any, list[Op] | None]] = {}

    # ---- the decision per layer shape ---------------------------------------------------------------
    def arithmetic(self, check: ShapeCheck) -> Arithmetic:
        """How this mode serves a probed shape: ``grouped`` (the fused arithmetic), ``compact`` or ``vllm``
        (vLLM's own ops). ``grouped``: vLLM's bits where the probe found them, else the fused arithmetic within
        the error bound; ``compact``: the compact arithmetic wherever within the bound (never vLLM's bits), else
        as ``grouped``; ``exact``: vLLM's bits only."""
        if self.mode == "compact" and check.compact_bounded and (check.identical or check.bounded):
            return "compact"  # (the fused arithmetic serves its per-token form: both within the bound)
        if check.identical or (self.mode != "exact" and check.bounded):
            return "grouped"
        return "vllm"

    def serves(self, lora_a: tuple[Any, ...], output_slices: tuple[int, ...], limit: int) -> Arithmetic:
        """The arithmetic of this layer: the fused one in ``fused`` mode, ``force`` where set; otherwise as
        :meth:`arithmetic` decides from the probe of the layer's shape (up to ``limit`` tokens, or sequences
        for lm_head), run on its first call."""
        if self.force is not None:
            return self.force
        if self.mode == "fused":
            return "grouped"
        a = lora_a[0]
        shape = LayerShape(
            a.shape[-1], tuple(output_slices), a.shape[-2], a.shape[0], str(a.dtype).split(".")[-1]
        )
        check = self.checks.get(shape)
        if check is None or (self.mode == "compact" and check.compact_error is None):  # (again, with compact)
            check = self.checks[shape] = check_shape(shape, limit, compact=self.mode == "compact")
            compact = "" if check.compact_error is None else f"compact {check.compact_error:.3g}, "
            log.info(
                "CPU LoRA on %s: %s for %s (probed %d token counts in %.1f s; error vs float64: %sfused %.3g, "
                "vLLM's own %.3g)",
                machine()["cpu"],
                self.verdict(check),
                shape,
                len(check.tokens),
                check.seconds,
                compact,
                check.fused_error,
                check.vllm_error,
            )
        return self.arithmetic(check)

    def verdict(self, check: ShapeCheck) -> str:
        """How this mode serves a probed shape, in words (the log line's)."""
        arithmetic = self.arithmetic(check)
        if check.identical and arithmetic == "grouped":
            return "grouped arithmetic, bit-identical to vLLM's ops"
        if arithmetic == "compact":
            return f"compact arithmetic, error within {ERROR_FACTOR:g}x vLLM's own (engine.cpu_lora: compact)"
        differed = f"differed from vLLM's bits at {check.mismatched[:8]} tokens"
        if arithmetic == "grouped":
            return f"grouped arithmetic, error within {ERROR_FACTOR:g}x vLLM's own ({differed})"
        why = "engine.cpu_lora: exact" if check.bounded else f"its error over {ERROR_FACTOR:g}x vLLM's own"
        return f"vLLM's own ops (the grouped arithmetic {differed}; {why})"

    def report(self) -> dict[str, Any]:
        """The mode, the machine and the verdict per layer shape seen so far: each layer's probe with the
        ``arithmetic`` that serves it (``compact``, ``grouped`` or ``vllm``); ``bit_identical``: every layer
        gives vLLM's bits (None without a probe: ``fused`` and a forced arithmetic make no claim);
        ``error_bound``: the bound a layer without them is held to, against float64, as a multiple of vLLM's
        own error."""
        layers = [{**c.as_dict(), "arithmetic": self.arithmetic(c)} for c in self.checks.values()]
        return {
            "mode": self.mode,
            "machine": machine(),
            "layers": layers,
            "bit_identical": None
            if self.mode == "fused" or self.force is not None
            else all(
                c["arithmetic"] == "vllm" or (c["identical"] and c["arithmetic"] == "grouped") for c in layers
            ),
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
        batch: int | None = None,
    ) -> bool:
        """Add the LoRA of each token's slot (``indices``, -1: none) to ``y`` in place and return True, or
        return False (``y`` untouched) where the layer's shape is left to vLLM's own ops (:meth:`serves`).
        ``groups`` is :func:`slot_groups` of ``indices`` when the caller already has it; ``limit``: the most
        rows a call of this layer can have (the probe's largest token count; ``max_tokens`` when None).
        ``batch``: the caller's number for the batch (its tokens' slots and the adapters in the slots), which
        the caller changes whenever either changes: the layer's :meth:`plan` is then kept and rerun by every
        later call with that number and mode (a decode batch runs tens of steps; None: planned per call)."""
        x2 = x.reshape(-1, x.shape[-1])
        y2 = y.view(-1, y.shape[-1])
        key = None if batch is None else (batch, self.mode, self.force)
        hit = None if key is None else self._plans.get(id(lora_a[0]))
        if hit is not None and hit[0] == key:
            ops = hit[1]
        else:
            ops = self.plan(y2, x2, indices, lora_a, lora_b, scale, output_slices, groups, limit)
            if key is not None:
                self._plans[id(lora_a[0])] = (key, ops)
        if ops is None:
            return False
        for op in ops:
            op(y2, x2)
        return True

    def plan(
        self,
        y2: Any,
        x2: Any,
        indices: Any,
        lora_a: tuple[Any, ...],
        lora_b: tuple[Any, ...],
        scale: float,
        output_slices: tuple[int, ...],
        groups: list[tuple[int, Any]] | None = None,
        limit: int | None = None,
    ) -> list[Op] | None:
        """The ops ``(y2, x2)`` that add this layer's LoRA for this batch (``y2``, ``x2``: its 2-D output and
        input, read for shape and dtype only), or None where vLLM's own ops serve the layer. Everything that
        depends only on the batch and the slots' weights (the arithmetic, the slot groups, the stacked weights,
        masks) is decided here."""
        import torch

        arithmetic = self.serves(lora_a, output_slices, limit or self.max_tokens)
        if arithmetic == "vllm":
            return None
        groups = slot_groups(indices) if groups is None else groups
        if not groups:
            return []
        if arithmetic == "compact":
            return self._compact(indices, groups, lora_a, lora_b, scale, output_slices)
        weights = self.weights
        if y2.dtype != torch.bfloat16 or lora_a[0].shape[-2] % ROW_BLOCK:  # the fused expand needs both

            def per_group(y2: Any, x2: Any) -> None:
                exact_linear(y2, x2, groups, lora_a, lora_b, scale, output_slices, weights.rank)

            return [per_group]
        if len(groups) == 1 and groups[0][1] is None:  # every token has the same adapter
            part = weights.part(lora_a, lora_b, groups[0][0])
            return [] if part is None else [_alone(part, None, scale, output_slices)]
        per_slot = weights.slot_rows(lora_a)
        alone, batched = split(groups, lambda slot: any(per_slot[slot]))
        ops: list[Op] = []
        if batched:
            stacked = weights.stacked(lora_a, lora_b, tuple(s for s, _ in batched))
            ops.append(together(indices, batched, bool(alone), stacked, scale, output_slices))
        for slot, rows in alone:  # one shrink/expand on the slot's own rows, its weights shared by its tokens
            ops.append(_alone(weights.part(lora_a, lora_b, slot), rows, scale, output_slices))
        return ops

    def _compact(
        self,
        indices: Any,
        groups: list[tuple[int, Any]],
        lora_a: tuple[Any, ...],
        lora_b: tuple[Any, ...],
        scale: float,
        output_slices: tuple[int, ...],
    ) -> list[Op]:
        """The ops of the compact arithmetic (:func:`.arithmetic.compact`): a slot with many tokens (a prefill
        chunk) on its own weights, the others together in the masked form; slots that touch none of this layer's
        slices drop out. Slot sets beyond the masked form's rows (many compositions at once: sets that change
        every few steps, where building a set's compact weights costs more than it saves) take the fused
        arithmetic's per-token form, whose per-slot parts are reused across sets (the probe bounds both). Where
        every slot holding the layer's weights fits :meth:`.weights.SlotWeights.held`, the batched tokens run
        on that one entry whatever their set, and a prefill chunk on its slot's blocks of it
        (:func:`.arithmetic.compact_block`: no entry built per request)."""
        import torch

        weights = self.weights

        per_slot = weights.slot_rows(lora_a)

        def touches(slot: int) -> bool:
            return any(per_slot[slot])

        def run(entry: Any, keep: Any, rows: Any) -> Op:
            return lambda y2, x2: compact(y2, x2, keep, rows, entry, scale)

        def block(entry: Any, j: int, rows: Any) -> Op:
            return lambda y2, x2: compact_block(y2, x2, rows, entry, j, scale, output_slices)

        if len(groups) == 1 and groups[0][1] is None:  # every token has the same adapter
            slot = groups[0][0]
            return [run(weights.compact(lora_a, lora_b, (slot,)), None, None)] if touches(slot) else []
        alone, batched = split(groups, touches)
        members = tuple(s for s, _ in batched)
        held = weights.held(lora_a, lora_b, members or tuple(s for s, _ in alone))
        if held is not None:  # every held slot's rows, until a refill
            entry = weights.compact(lora_a, lora_b, held, pack_at_use=HELD_PACK_AT_USE, masked=True)
            on_blocks = [block(entry, held.index(slot), rows) for slot, rows in alone]  # prefill chunks
            if not batched:
                return on_blocks
            slots = indices.reshape(-1)  # the others against every held row, other slots' columns masked
            if alone:
                slots = slots.masked_fill(torch.isin(slots, torch.tensor([s for s, _ in alone])), -1)
            return [*on_blocks, run(entry, keep_own(entry.owner, slots), None)]
        ops: list[Op] = []
        if batched:
            if weights.masked(lora_a, members):  # the other tokens add exactly zero: no gather needed
                entry = weights.compact(lora_a, lora_b, members)
                ops.append(run(entry, keep_own(entry.owner, indices.reshape(-1)), None))
            else:
                stacked = weights.stacked(lora_a, lora_b, members)
                ops.append(together(indices, batched, bool(alone), stacked, scale, output_slices))
        for slot, rows in alone:
            ops.append(run(weights.compact(lora_a, lora_b, (slot,)), None, rows))
        return ops


def _alone(part: tuple[Any, list[Any]], rows: Any, scale: float, output_slices: tuple[int, ...]) -> Op:
    """The op for one slot's tokens ``rows`` (None: every token) on the slot's own ``part`` (its weights read
    once for all of them): one shrink and one expand per slice."""
    a, bs = part

    def one_slot(y2: Any, x2: Any) -> None:
        expand(
            y2, shrink(x2 if rows is None else x2.index_select(0, rows), a), bs, output_slices, scale, rows
        )

    return one_slot


def check_shape(shape: LayerShape, max_tokens: int, seed: int = 0, compact: bool = False) -> ShapeCheck:
    """Run the fused path (both batched layouts) against vLLM's ops and float64 for ``shape``, and with
    ``compact`` the compact arithmetic (every layout) against float64 (``compact_error`` None without)."""
    import torch

    started = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randint(1, shape.r_max + 1, (shape.slots,), generator=g).tolist()
    ranks[0] = shape.r_max
    lora_a, lora_b = padded_weights(shape, ranks, g)
    check = ShapeCheck(shape=shape, tokens=token_counts(max_tokens))
    dtype = getattr(torch, shape.dtype)
    fused = [GroupedLoRA(mode="fused", weights=SlotWeights(dense_max_cols=d)) for d in (0, 1 << 30)]
    compact_error = 0.0
    compacts = [  # per token; the batch's set masked with torch's matmul, with oneDNN's packed GEMM; all held
        GroupedLoRA(weights=SlotWeights(dense_max_cols=d, pack_at_use=p, held_max_cols=h), force="compact")
        for d, p, h in ((0, 0, 0), (1 << 30, 0, 0), (1 << 30, 1, 0), (0, 1, 1 << 30))
        if compact
    ]
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
            for grouped in compacts:
                got = y.clone()
                grouped.linear(got, x, idx, lora_a, lora_b, 0.5, shape.slices)
                compact_error = max(compact_error, float((got.double() - exact).abs().max()))
    check.compact_error = compact_error if compact else None
    check.seconds = round(time.perf_counter() - started, 3)
    return check
