"""Grouped CPU LoRA for vLLM's linear layers and lm_head: a few GEMMs per layer instead of a per-token gather.

vLLM's CPU punica wrapper applies LoRA with pure-torch ops that gather a (rank x hidden) matrix PER TOKEN
(``lora_a[indices]``; for lm_head a vocab x rank matrix per sequence) and contract it with an einsum; on CPU
that costs several times the base layer's own matmul. Here the tokens of a batch are grouped by slot once
per step (when vLLM updates the wrapper's metadata) and, per layer, with ``S`` the slots present:

    A   = concat_{i, s in S} A_i[s, :r_is]      (fp32)   # [cols, in]  slice-major; r_is: the REAL rank
    h   = x @ A.T                                        # [n, cols]   one GEMM for every slot and slice
    h  *= (owner(col) == slot(token))                    # a token keeps its own slot's columns only
    y[:, slice_i] += round_y(scale * h[:, cols_i]) @ B_i.T   # one GEMM per touched slice

vLLM zero-pads every slot to ``max_lora_rank`` (64 for 4-adapter stacks: a rank-8 adapter is 7/8 zeros) and
zero-fills the slices of modules an adapter does not target; :func:`slot_rank` reads the real rank once after a
slot is filled (vLLM's ``activate_adapter`` marks it refilled) and untouched slices cost nothing. The fused
weights are cached per layer and slot set. Batches above 256 tokens (prefill) take one GEMM pair per slot on
its own rows instead (the masked form would multiply the FLOPs by the number of slots). Rows whose slot is -1
(requests without an adapter) are left untouched, bit for bit (the upstream bug that applied the last slot to
them cannot happen here). Only the CPU wrapper is patched (:func:`install`); the CUDA path keeps vLLM's Triton
kernels.

Two variants (``engine.cpu_lora``):
- ``grouped``: the above. The shrink accumulates in fp32 and its result is rounded to y's dtype before the
  expand, as vLLM does; only the summation order differs, so results are as close to float64 as vLLM's
  (tested) but greedy text can diverge from vLLM's ops in some sequences (measured: bench/results/cpu-lora.json).
- ``grouped_exact``: the same grouping, but each slot's rows go through vLLM's own arithmetic (fp32 shrink,
  per-token einsum on the slot's weights broadcast without a copy, bf16 expand): bit-identical to vLLM's ops,
  slower than ``grouped``.
"""

from __future__ import annotations

from typing import Any

_GROUPS = "_rmn_slot_groups"
_RANKS = "_rmn_slot_ranks"
_MODE = {"exact": False}
# slot -> fills so far: a cached rank or fused weight of an older fill is stale
_SLOT_GENERATIONS: dict[int, int] = {}


def refilled(slot: int) -> None:
    """Note that vLLM (re)filled ``slot``'s buffers (called after its ``activate_adapter``)."""
    _SLOT_GENERATIONS[slot] = _SLOT_GENERATIONS.get(slot, 0) + 1


def slot_rank(lora_a: Any, slot: int) -> int:
    """How many leading rows of ``A[slot]`` (``[slots, 1, r_max, in]``) hold nonzero weights: the slot's
    effective rank in this buffer (0 when the adapter does not touch this module/slice). Cached on the
    buffer tensor until the slot is refilled."""
    ranks: dict[int, tuple[int, int]] | None = getattr(lora_a, _RANKS, None)
    if ranks is None:
        ranks = {}
        setattr(lora_a, _RANKS, ranks)
    generation = _SLOT_GENERATIONS.get(slot, 0)
    hit = ranks.get(slot)
    if hit is not None and hit[0] == generation:
        return hit[1]
    a = lora_a[slot, 0] if lora_a.dim() == 4 else lora_a[slot]
    nonzero = (a != 0).any(dim=1).nonzero()
    rank = int(nonzero[-1]) + 1 if nonzero.numel() else 0
    ranks[slot] = (generation, rank)
    return rank


def slot_groups(indices: Any) -> list[tuple[int, Any]]:
    """``[(slot, rows)]`` for every slot >= 0 in ``indices`` (one per token); ``rows`` is None when every
    token has that slot (no gather needed), else a 1-D LongTensor of row numbers."""
    import torch

    slots = torch.unique(indices).tolist()
    if len(slots) == 1:
        return [(int(slots[0]), None)] if slots[0] >= 0 else []
    return [(int(s), (indices == s).nonzero().squeeze(1)) for s in slots if s >= 0]


_DENSE_MAX_TOKENS = 256  # up to this many tokens, one masked GEMM pair for all slots beats one pair per slot
_BATCHES_KEPT = 4  # fused weights kept per layer for this many slot sets (older ones are rebuilt on demand)
_FUSED_BUDGET = 256 << 20  # bytes of fused weights across all layers; beyond it every cache starts over
_FUSED: dict[str, Any] = {"bytes": 0, "caches": []}


def _fused(lora_a: tuple[Any, ...], lora_b: tuple[Any, ...], slots: tuple[int, ...]) -> Any:
    """fp32 weights of ``slots`` across every slice, at their real ranks: ``(A, Bs, owner)`` with
    ``A`` [cols, in] (slice-major, then slot), ``Bs[i]`` [size_i, cols_i] (None for an untouched slice) and
    ``owner`` [cols] (each column's slot); None when no slot touches any slice. Cached on the layer's first
    A buffer until vLLM activates an adapter again."""
    import torch

    batches: dict[tuple[Any, ...], Any] | None = getattr(lora_a[0], "_rmn_fused", None)
    if batches is None:
        batches = {}
        lora_a[0]._rmn_fused = batches
        _FUSED["caches"].append(batches)
    key = (slots, tuple(_SLOT_GENERATIONS.get(s, 0) for s in slots))
    if key in batches:
        return batches[key]
    a_parts, b_parts, owner = [], [], []
    for a, b in zip(lora_a, lora_b, strict=True):
        cols = []
        for slot in slots:
            rank = slot_rank(a, slot)
            if rank:
                a_parts.append(a[slot, 0, :rank] if a.dim() == 4 else a[slot, :rank])
                cols.append(b[slot, 0, :, :rank] if b.dim() == 4 else b[slot, :, :rank])
                owner += [slot] * rank
        b_parts.append(torch.cat(cols, dim=1).float().contiguous() if cols else None)
    fused = None
    if a_parts:
        fused = (torch.cat(a_parts).float().contiguous(), b_parts, torch.tensor(owner))
    for old in [k for k in batches if k[0] == slots] + list(batches)[
        : max(0, len(batches) - _BATCHES_KEPT + 1)
    ]:
        _FUSED["bytes"] -= _nbytes(batches.pop(old, None))  # a stale fill of these slots, or the oldest
    size = _nbytes(fused)
    if _FUSED["bytes"] + size > _FUSED_BUDGET:
        for cache in _FUSED["caches"]:
            cache.clear()
        _FUSED["bytes"] = 0
    batches[key] = fused
    _FUSED["bytes"] += size
    return fused


def _nbytes(fused: Any) -> int:
    """Bytes held by one fused entry (0 for None)."""
    if fused is None:
        return 0
    a_all, b_parts, _ = fused
    return int(a_all.nbytes) + sum(int(b.nbytes) for b in b_parts if b is not None)


def grouped_lora_linear(
    y: Any,
    x: Any,
    groups: list[tuple[int, Any]],
    lora_a: tuple[Any, ...],
    lora_b: tuple[Any, ...],
    scale: float,
    output_slices: tuple[int, ...],
    exact: bool = False,
    indices: Any = None,
) -> None:
    """``y[:, slice_i] += scale * x @ A_i[slot].T @ B_i[slot].T`` per token's slot (see the module docstring;
    ``exact``: the ``grouped_exact`` arithmetic; ``indices``: the per-token slots ``groups`` came from, which
    lets small batches take the one-GEMM-pair path)."""
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.view(-1, y.shape[-1])
    if exact:
        _exact_linear(y2, x2, groups, lora_a, lora_b, scale, output_slices)
        return
    if not groups:
        return
    one_slot = len(groups) == 1 and groups[0][1] is None  # every token has the same adapter
    if one_slot or (indices is not None and x2.shape[0] <= _DENSE_MAX_TOKENS):
        fused = _fused(lora_a, lora_b, tuple(slot for slot, _ in groups))
        if fused is None:
            return
        a_all, b_parts, owner = fused
        h = x2.float() @ a_all.T  # [n, cols]: every token against every present slot's A
        if not one_slot:  # keep each token's own slot's columns only (none for tokens without an adapter)
            h *= owner.unsqueeze(0) == indices.reshape(-1, 1)
        _expand(y2, h, b_parts, output_slices, scale, None)
        return
    for slot, rows in groups:  # large mixed batches: one GEMM pair per slot, on its rows only
        fused = _fused(lora_a, lora_b, (slot,))
        if fused is not None:
            a_s, b_parts, _ = fused
            _expand(y2, x2.index_select(0, rows).float() @ a_s.T, b_parts, output_slices, scale, rows)


def _expand(
    y2: Any, h: Any, b_parts: list[Any], output_slices: tuple[int, ...], scale: float, rows: Any
) -> None:
    """``y2[rows, slice_i] += scale * h[:, cols_i] @ B_i.T`` for every touched slice (one rounding to y's dtype)."""
    if scale != 1.0:
        h = h * scale
    if h.dtype != y2.dtype:  # vLLM's expand reads the shrink result in y's dtype: round alike
        h = h.to(y2.dtype).float()
    offset = col = 0
    for b, size in zip(b_parts, output_slices, strict=True):
        if b is not None:
            out = (h[:, col : col + b.shape[1]] @ b.T).to(y2.dtype)
            target = y2[:, offset : offset + size]
            if rows is None:
                target += out
            else:
                target.index_add_(0, rows, out)
            col += b.shape[1]
        offset += size


def _exact_linear(
    y2: Any,
    x2: Any,
    groups: list[tuple[int, Any]],
    lora_a: tuple[Any, ...],
    lora_b: tuple[Any, ...],
    scale: float,
    output_slices: tuple[int, ...],
) -> None:
    """``grouped_exact`` on 2-D ``y2``/``x2``: each slot's rows through vLLM's own arithmetic (fp32 shrink,
    per-token einsum on the slot's weights broadcast without a copy, expand in y's dtype): bit-identical to
    vLLM's ops."""
    import torch

    for slot, rows in groups:
        xs = x2 if rows is None else x2.index_select(0, rows)
        n = xs.shape[0]
        offset = 0
        for a, b, size in zip(lora_a, lora_b, output_slices, strict=True):
            if slot_rank(a, slot) == 0:  # an untouched module/slice adds exactly zero: skip it
                offset += size
                continue
            a_s = a[slot, 0] if a.dim() == 4 else a[slot]  # [r, in]
            b_s = b[slot, 0] if b.dim() == 4 else b[slot]  # [size, r]
            a32 = a_s.to(torch.float32).unsqueeze(0).expand(n, -1, -1)
            h = scale * torch.einsum("bi, boi -> bo", xs.to(torch.float32), a32)
            hy = h.to(y2.dtype)
            out = torch.einsum("bi, boi -> bo", hy, b_s.to(y2.dtype).unsqueeze(0).expand(n, -1, -1))
            target = y2[:, offset : offset + size]
            if rows is None:
                target += out
            else:
                target.index_add_(0, rows, out)
            offset += size


def _wrapper_class() -> Any:
    """vLLM's CPU punica wrapper class (patched at runtime, hence Any), or None in a vLLM without one."""
    try:
        from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    except ImportError:
        return None
    return PunicaWrapperCPU


def install(exact: bool = False) -> bool:
    """Patch vLLM's CPU punica wrapper (idempotent; ``exact`` selects ``grouped_exact``); False when this
    vLLM has none."""
    _MODE["exact"] = exact
    PunicaWrapperCPU = _wrapper_class()
    if PunicaWrapperCPU is None:
        return False
    if getattr(PunicaWrapperCPU, "_rmn_grouped", False):
        return True
    original_update = PunicaWrapperCPU.update_metadata
    original_linear = PunicaWrapperCPU.add_lora_linear
    original_logits = PunicaWrapperCPU.add_lora_logits

    def update_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
        original_update(self, *args, **kwargs)
        setattr(self, _GROUPS, None)  # the batch changed: regroup on first use

    def add_lora_linear(
        self: Any,
        y: Any,
        x: Any,
        lora_a_stacked: tuple[Any, ...],
        lora_b_stacked: tuple[Any, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: Any = None,
        **kwargs: Any,
    ) -> None:
        indices = self.token_lora_indices
        if x.reshape(-1, x.shape[-1]).shape[0] != indices.shape[0]:  # padded batch: vLLM's own path
            original_linear(
                self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
            )
            return
        groups = getattr(self, _GROUPS, None)
        if groups is None:
            groups = slot_groups(indices)
            setattr(self, _GROUPS, groups)
        grouped_lora_linear(
            y,
            x,
            groups,
            lora_a_stacked,
            lora_b_stacked,
            scale,
            output_slices,
            exact=_MODE["exact"],
            indices=indices,
        )

    def add_lora_logits(
        self: Any,
        y: Any,
        x: Any,
        lora_a_stacked: Any,
        lora_b_stacked: Any,
        scale: float,
        *,
        buffer: Any = None,
        **kwargs: Any,
    ) -> None:
        # vLLM's version gathers a [vocab x r] matrix per sequence; here: the same grouping, per sequence
        indices = self.sampler_indices
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        if x2.shape[0] != indices.shape[0]:
            original_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)
            return
        size = min(y2.shape[-1], lora_b_stacked.shape[-2])
        grouped_lora_linear(
            y2,
            x2,
            slot_groups(indices),
            (lora_a_stacked,),
            (lora_b_stacked[..., :size, :],),
            scale,
            (size,),
            exact=_MODE["exact"],
            indices=indices,
        )

    _count_activations()
    cls = PunicaWrapperCPU
    cls._rmn_originals = (original_update, original_linear, original_logits)
    cls.update_metadata = update_metadata
    cls.add_lora_linear = add_lora_linear
    cls.add_lora_logits = add_lora_logits
    cls._rmn_grouped = True
    return True


def _count_activations() -> None:
    """Make vLLM's ``activate_adapter`` (which fills a slot's buffers) call :func:`refilled` (patched once)."""
    try:
        from vllm.lora import model_manager
    except ImportError:
        return
    manager: Any = model_manager.LoRAModelManager  # patched at runtime
    if getattr(manager, "_rmn_counts", False):
        return
    original = manager.activate_adapter

    def activate_adapter(self: Any, lora_id: int, *args: Any, **kwargs: Any) -> Any:
        activated = False
        try:
            activated = original(self, lora_id, *args, **kwargs)  # False: active already (every step)
            return activated
        finally:
            if activated is not False:  # a slot was (possibly partly) refilled: which one?
                slots = [i for i, x in enumerate(getattr(self, "lora_index_to_id", [])) if x == lora_id]
                for slot in slots or range(len(getattr(self, "lora_index_to_id", []))):
                    refilled(slot)

    manager.activate_adapter = activate_adapter
    manager._rmn_counts = True


def uninstall() -> None:
    """Restore vLLM's own CPU wrapper methods (tests compare both paths in one process)."""
    cls = _wrapper_class()
    if cls is not None and getattr(cls, "_rmn_grouped", False):
        cls.update_metadata, cls.add_lora_linear, cls.add_lora_logits = cls._rmn_originals
        cls._rmn_grouped = False


def installed() -> bool:
    """True while the grouped path is patched in."""
    return bool(getattr(_wrapper_class(), "_rmn_grouped", False))
