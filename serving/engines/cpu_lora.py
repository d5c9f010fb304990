"""Grouped CPU LoRA for vLLM's linear layers: one matmul pair per adapter slot present in the batch.

vLLM's CPU punica wrapper applies LoRA with pure-torch ops that gather a (rank x hidden) matrix PER TOKEN
(``lora_a[indices]``) and contract it with an einsum; on CPU that costs several times the base layer's own
matmul. Here the tokens of a batch are grouped by slot once per step (when vLLM updates the wrapper's
metadata), and each linear layer does, for each slot ``s`` present and each output slice ``i``:

    h            = x[rows_s] @ A_i[s].T                      # [n_s, r]      A_i: [slots, 1, r, in]
    y[rows_s, o] += (scale * h) @ B_i[s].T                   # [n_s, size_i] B_i: [slots, 1, size_i, r]

Rows whose slot is -1 (requests without an adapter) are left untouched (the upstream bug that applied the
last slot to them cannot happen here). Only the CPU wrapper is patched (:func:`install`); the CUDA path keeps
vLLM's Triton kernels.

Two variants (``engine.cpu_lora``):
- ``grouped``: one GEMM per slot for the shrink and one for the expand, in the weights' dtype (fp32
  accumulation inside the GEMM), at the slot's REAL rank: vLLM zero-pads every adapter to
  ``max_lora_rank`` (64 for 4-adapter stacks; a rank-8 adapter is 7/8 zeros) and zero-fills the slices of
  modules an adapter does not target, so only the leading nonzero rows of A (and columns of B) are used
  and all-zero slices are skipped. The ranks are read from the slot buffers once after vLLM fills a slot
  (:func:`slot_rank`; vLLM's ``activate_adapter`` bumps a generation counter that invalidates them). Fastest; it rounds differently from vLLM's per-token ops at the bf16 level,
  so greedy outputs can diverge from vLLM's after some tokens (measured on the demo: bench/results/cpu-lora.json).
- ``grouped_exact``: the same grouping, but each slot's rows go through vLLM's own arithmetic (fp32 shrink,
  per-token einsum on the slot's weights broadcast without a copy, bf16 expand): bit-identical to vLLM's ops,
  slower than ``grouped``, still faster than the per-token gather.
"""

from __future__ import annotations

from typing import Any

_GROUPS = "_rmn_slot_groups"
_RANKS = "_rmn_slot_ranks"
_MODE = {"exact": False}
_GENERATION = [0]  # bumped whenever vLLM (re)fills adapter slots: cached slot ranks are read again


def slot_rank(lora_a: Any, slot: int) -> int:
    """How many leading rows of ``A[slot]`` (``[slots, 1, r_max, in]``) hold nonzero weights: the slot's
    effective rank in this buffer (0 when the adapter does not touch this module/slice). Cached on the
    buffer tensor until vLLM activates an adapter again."""
    cached = getattr(lora_a, _RANKS, None)
    if cached is None or cached[0] != _GENERATION[0]:
        cached = (_GENERATION[0], {})
        setattr(lora_a, _RANKS, cached)
    ranks: dict[int, int] = cached[1]
    rank = ranks.get(slot)
    if rank is None:
        a = lora_a[slot, 0] if lora_a.dim() == 4 else lora_a[slot]
        nonzero = (a != 0).any(dim=1).nonzero()
        rank = int(nonzero[-1]) + 1 if nonzero.numel() else 0
        ranks[slot] = rank
    return rank


def slot_groups(indices: Any) -> list[tuple[int, Any]]:
    """``[(slot, rows)]`` for every slot >= 0 in ``indices`` (one per token); ``rows`` is None when every
    token has that slot (no gather needed), else a 1-D LongTensor of row numbers."""
    import torch

    slots = torch.unique(indices).tolist()
    if len(slots) == 1:
        return [(int(slots[0]), None)] if slots[0] >= 0 else []
    return [(int(s), (indices == s).nonzero().squeeze(1)) for s in slots if s >= 0]


def grouped_lora_linear(
    y: Any,
    x: Any,
    groups: list[tuple[int, Any]],
    lora_a: tuple[Any, ...],
    lora_b: tuple[Any, ...],
    scale: float,
    output_slices: tuple[int, ...],
    exact: bool = False,
) -> None:
    """``y[:, slice_i] += scale * x @ A_i[slot].T @ B_i[slot].T`` per token's slot (see the module docstring;
    ``exact``: the ``grouped_exact`` arithmetic)."""
    import torch

    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.view(-1, y.shape[-1])
    for slot, rows in groups:
        xs = x2 if rows is None else x2.index_select(0, rows)
        n = xs.shape[0]
        offset = 0
        for a, b, size in zip(lora_a, lora_b, output_slices, strict=True):
            a_s = a[slot, 0] if a.dim() == 4 else a[slot]  # [r, in]
            b_s = b[slot, 0] if b.dim() == 4 else b[slot]  # [size, r]
            if not exact:
                rank = slot_rank(a, slot)
                if rank == 0:  # the adapter leaves this module/slice alone
                    offset += size
                    continue
                a_s, b_s = a_s[:rank], b_s[:, :rank]
            if exact:  # vLLM's ops, term for term: fp32 shrink buffer, then expand in y's dtype
                a32 = a_s.to(torch.float32).unsqueeze(0).expand(n, -1, -1)
                h = scale * torch.einsum("bi, boi -> bo", xs.to(torch.float32), a32)
                hy = h.to(y2.dtype)
                out = torch.einsum("bi, boi -> bo", hy, b_s.to(y2.dtype).unsqueeze(0).expand(n, -1, -1))
            else:
                h = xs.to(a_s.dtype) @ a_s.T
                if scale != 1.0:
                    h = (h.float() * scale).to(b_s.dtype)
                out = (h.to(b_s.dtype) @ b_s.T).to(y2.dtype)
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
            y, x, groups, lora_a_stacked, lora_b_stacked, scale, output_slices, exact=_MODE["exact"]
        )

    _count_activations()
    cls = PunicaWrapperCPU
    cls._rmn_originals = (original_update, original_linear)
    cls.update_metadata = update_metadata
    cls.add_lora_linear = add_lora_linear
    cls._rmn_grouped = True
    return True


def _count_activations() -> None:
    """Make vLLM's ``activate_adapter`` (which fills a slot's buffers) bump :data:`_GENERATION` (once)."""
    try:
        from vllm.lora import model_manager
    except ImportError:
        return
    manager: Any = model_manager.LoRAModelManager  # patched at runtime
    if getattr(manager, "_rmn_counts", False):
        return
    original = manager.activate_adapter

    def activate_adapter(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            _GENERATION[0] += 1

    manager.activate_adapter = activate_adapter
    manager._rmn_counts = True


def uninstall() -> None:
    """Restore vLLM's own CPU wrapper methods (tests compare both paths in one process)."""
    cls = _wrapper_class()
    if cls is not None and getattr(cls, "_rmn_grouped", False):
        cls.update_metadata, cls.add_lora_linear = cls._rmn_originals
        cls._rmn_grouped = False


def installed() -> bool:
    """True while the grouped path is patched in."""
    return bool(getattr(_wrapper_class(), "_rmn_grouped", False))
