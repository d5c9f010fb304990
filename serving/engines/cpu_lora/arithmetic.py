"""The grouped path's arithmetic: stateless ops on a batch's tokens grouped by slot.

Two families, both in the order of vLLM's per-token ops (fp32 shrink into a buffer, expand in y's dtype, one
rounding when added to y):
- fused (:func:`shrink`, :func:`expand`, :func:`together`): one batched gemv per token over shared or stacked
  rows, one matmul (or a per-token bmm) per slice for the expand (bf16);
- per slot group (:func:`exact_linear`, other dtypes): vLLM's per-token einsums on each slot's padded weights,
  broadcast without a gather.
Whether either sums in the same order as vLLM's einsum over the whole batch depends on the CPU's ISA and the
shapes (oneDNN and MKL choose their blocking per ISA, shape and batch), so :mod:`.probe` checks it per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Op = Callable[[Any, Any], None]  # (y2, x2): adds one part of a layer's LoRA to y2 in place

# a slot with this many tokens in a batch runs alone (its weights read once for all of them); below, its tokens
# join the batched per-token path, which repeats a slot's weights for each of its tokens
ALONE_TOKENS = 4


def slot_groups(indices: Any) -> list[tuple[int, Any]]:
    """``[(slot, rows)]`` for every slot >= 0 in ``indices`` (one per token); ``rows`` is None when every
    token has that slot (no gather needed), else a 1-D LongTensor of row numbers."""
    import torch

    slots = torch.unique(indices).tolist()
    if len(slots) == 1:
        return [(int(slots[0]), None)] if slots[0] >= 0 else []
    return [(int(s), (indices == s).nonzero().squeeze(1)) for s in slots if s >= 0]


def split(
    groups: list[tuple[int, Any]], touches: Callable[[int], bool]
) -> tuple[list[tuple[int, Any]], list[tuple[int, Any]]]:
    """``(alone, together)``: slots with at least :data:`ALONE_TOKENS` tokens (a prefill chunk) run on their
    own rows with their weights shared by those tokens; the others batch together (:func:`together`); slots
    that touch none of this layer's slices (``touches`` False) drop out."""
    alone: list[tuple[int, Any]] = []
    together_: list[tuple[int, Any]] = []
    for slot, rows in groups:
        if touches(slot):
            (alone if rows.shape[0] >= ALONE_TOKENS else together_).append((slot, rows))
    return alone, together_


def add_rows(target: Any, out: Any, rows: Any) -> None:
    """``target[rows] += out`` (every row when ``rows`` is None), one rounding in target's dtype like vLLM's."""
    if rows is None:
        target += out
    else:
        target.index_add_(0, rows, out)


def shrink(x2: Any, a_all: Any) -> Any:
    """``x2 @ a_all.T`` in fp32 [n, cols] with vLLM's per-token arithmetic: one batched matmul whose every
    batch is one token times the shared weights (broadcast, no copy), i.e. the gemv vLLM's einsum runs per
    token, over all slots and slices at once."""
    import torch

    n = x2.shape[0]
    return torch.bmm(x2.float().unsqueeze(1), a_all.T.unsqueeze(0).expand(n, -1, -1)).view(n, -1)


def expand(
    y2: Any, h: Any, b_parts: list[Any], output_slices: tuple[int, ...], scale: float, rows: Any
) -> None:
    """``y2[rows, slice_i] += round_y(scale * h[..., cols_i]) @ B_i.T`` for every touched slice, in y's dtype
    like vLLM's expand: ``h`` [n, cols] with ``B_i`` [size_i, cols_i] (one matmul), or ``h`` [n, 1, cols] with
    ``B_i`` [n, size_i, cols_i] (one per-token bmm)."""
    if scale != 1.0:
        h = h * scale
    h = h.to(y2.dtype)
    offset = col = 0
    for b, size in zip(b_parts, output_slices, strict=True):
        if b is not None:
            out = h[..., col : col + b.shape[-1]] @ b.transpose(-1, -2)
            add_rows(y2[:, offset : offset + size], out.view(h.shape[0], size), rows)
            col += b.shape[-1]
        offset += size


def together(
    indices: Any,
    groups: list[tuple[int, Any]],
    alone: bool,
    stacked: Any,
    scale: float,
    output_slices: tuple[int, ...],
) -> Op:
    """The op ``(y2, x2)`` that adds the LoRA of the slots with few tokens each (decodes) in one batched shrink
    and one batched expand per slice; what depends only on the batch (rows, masks, repeated weights) is
    prepared here, once per batch. Masked form (``stacked`` has an owner row): every token against all stacked
    rows (one gemv per token over shared weights), other slots' columns masked to zero, one expand matmul per
    slice (``alone``: other slots run alone, so only these slots' tokens are taken). Per-token form: every token
    against its own slot's rows only (viewed, or repeated when a slot has several tokens), a per-token gemv and
    a per-token bmm."""
    import torch

    a_sm, b_sm, owner = stacked
    if owner is not None:  # few rows: every token reads them all (cache-resident) and keeps its own slot's
        rows, slots = None, indices.reshape(-1)
        if alone:  # only the tokens of these slots
            rows = torch.cat([r for _, r in groups])
            slots = slots.index_select(0, rows)
        keep = keep_own(owner, slots)  # a token keeps its own slot's columns only

        def masked(y2: Any, x2: Any) -> None:
            h = shrink(x2 if rows is None else x2.index_select(0, rows), a_sm)  # [n, S*R]: every slot
            h *= keep
            expand(y2, h, b_sm, output_slices, scale, rows)

        return masked
    order = torch.cat([r for _, r in groups])  # tokens in slot order
    counts = [r.shape[0] for _, r in groups]
    if any(c != 1 for c in counts):
        repeats = torch.tensor(counts)
        a_sm = a_sm.repeat_interleave(repeats, dim=0)
        b_sm = [None if b is None else b.repeat_interleave(repeats, dim=0) for b in b_sm]
    a_t = a_sm.transpose(1, 2)

    def per_token(y2: Any, x2: Any) -> None:
        h = torch.bmm(x2.index_select(0, order).float().unsqueeze(1), a_t)  # [n, 1, R]
        expand(y2, h, b_sm, output_slices, scale, order)

    return per_token


def compact(y2: Any, x2: Any, keep: Any, rows: Any, entry: Any, scale: float) -> None:
    """The compact arithmetic: ``y2[rows] += scale * (x2[rows] @ A.T) @ B.T`` for the tokens ``rows`` (None:
    all) with :meth:`.weights.SlotWeights.compact`'s ``entry``: masked form (``keep`` [n, S*R]: the columns of
    each token's own slot, :func:`keep_own`; every token against all stacked rows, the others zeroed), or one
    slot's weights (``keep`` None: every token has that slot). Two matmuls, all in y's dtype with fp32
    accumulation inside each (oneDNN's packed GEMM once the entry recurs): not vLLM's order of sums nor its fp32
    shrink buffer, so it claims an error bound only."""
    a, b = entry.a, entry.b
    if entry.owner is None:  # one slot in the per-token layout: its rows shared by all its tokens
        a, b = a[0], b[0]
    xs = x2 if rows is None else x2.index_select(0, rows)
    packed = entry.matrices()
    h = xs @ a.T if packed is None else _onednn(packed[0], xs)  # [n, S*R]
    if keep is not None:
        h *= keep
    if scale != 1.0:
        h *= scale
    add_rows(y2, h @ b.T if packed is None else _onednn(packed[1], h), rows)


def compact_block(
    y2: Any, x2: Any, rows: Any, entry: Any, j: int, scale: float, output_slices: tuple[int, ...]
) -> None:
    """:func:`compact` for one slot's tokens ``rows`` (a prefill chunk) on that slot's blocks of a masked entry
    (``j``: the slot's place in it; views of its plain matrices: nothing built or copied per fill), two matmuls
    per slice the entry has rows for."""
    xs = x2.index_select(0, rows)
    offset = 0
    for i, (height, size) in enumerate(zip(entry.layout, output_slices, strict=True)):
        if height:
            at = entry.block(j, i)
            h = xs @ entry.a[at : at + height].T
            if scale != 1.0:
                h *= scale
            add_rows(
                y2[:, offset : offset + size], h @ entry.b[offset : offset + size, at : at + height].T, rows
            )
        offset += size


def keep_own(owner: Any, slots: Any) -> Any:
    """``[n, S*R]`` bool: which stacked columns (``owner``: each column's slot) belong to each token's slot."""
    return owner.unsqueeze(0) == slots.unsqueeze(1)


def _onednn(handler: Any, x: Any) -> Any:
    """``x @ W.T`` with vLLM's packed oneDNN GEMM handler of ``W``."""
    from vllm import _custom_ops as ops

    return ops.onednn_mm(handler, x, None)


def exact_linear(
    y2: Any,
    x2: Any,
    groups: list[tuple[int, Any]],
    lora_a: tuple[Any, ...],
    lora_b: tuple[Any, ...],
    scale: float,
    output_slices: tuple[int, ...],
    rank: Callable[[Any, int], int],
) -> None:
    """Each slot's rows through vLLM's per-token einsums (fp32 shrink, expand in y's dtype) on the slot's full
    padded weights broadcast without a copy (for dtypes the fused expand does not serve).
    ``rank(buffer, slot)`` 0 skips a slice the slot does not touch (it would add exactly zero)."""
    import torch

    for slot, rows in groups:
        xs = x2 if rows is None else x2.index_select(0, rows)
        n = xs.shape[0]
        offset = 0
        for a, b, size in zip(lora_a, lora_b, output_slices, strict=True):
            if rank(a, slot) == 0:
                offset += size
                continue
            a_s = a[slot, 0] if a.dim() == 4 else a[slot]  # [r, in]
            b_s = b[slot, 0] if b.dim() == 4 else b[slot]  # [size, r]
            a32 = a_s.to(torch.float32).unsqueeze(0).expand(n, -1, -1)
            h = scale * torch.einsum("bi, boi -> bo", xs.to(torch.float32), a32)
            out = torch.einsum(
                "bi, boi -> bo", h.to(y2.dtype), b_s.to(y2.dtype).unsqueeze(0).expand(n, -1, -1)
            )
            add_rows(y2[:, offset : offset + size], out, rows)
            offset += size
