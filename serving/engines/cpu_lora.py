"""Grouped CPU LoRA for vLLM's linear layers and lm_head: a few batched ops per layer instead of a per-token
gather, with results bit-identical to vLLM's own ops.

vLLM's CPU punica wrapper applies LoRA with pure-torch ops that gather a (rank x hidden) matrix PER TOKEN
(``lora_a[indices]``; for lm_head a vocab x rank matrix per sequence) and contract it with an einsum; on CPU
that costs several times the base layer's own matmul. Here the tokens of a batch are grouped by slot once
per step (when vLLM updates the wrapper's metadata) and, per layer, each slot's weights are cut to its REAL
rank and kept in fp32 (``P_s``: slice-major rows, cached until vLLM refills the slot). Then:

    a slot with many tokens (a prefill chunk)    h = x_s @ P_s.T ; y[rows_s, slice_i] += round_y(scale h) @ B_si.T
    the slots with few tokens each (decodes),    stacked per slot set: A [S, R, in], B_i [S, size_i, R_i]
      up to 256 stacked rows:  h = x @ A.T over all S*R rows, masked to each token's own slot, one expand per slice
      beyond:                  h_t = x_t @ A[slot(t)].T (a view when every slot has one token), per-token expand

so a token never pays for the other slots' rows where those are many (32 compositions: 8 slots x rank 32),
and a prefill chunk reads its slot's weights once. vLLM zero-pads every slot to ``max_lora_rank`` (64 for
4-adapter stacks: a rank-8 adapter is 7/8 zeros) and zero-fills the slices of modules an adapter does not
target; :func:`slot_rank` reads the real rank once after a slot is filled (vLLM's ``activate_adapter`` marks
it refilled) and untouched slices cost nothing. Rows whose slot is -1 (requests without an adapter) get
exactly zero, as with vLLM's masked ops (the upstream bug that applied the last slot to them cannot happen
here). Only the CPU wrapper is patched (:func:`install`); the CUDA path keeps vLLM's Triton kernels.

Bit-identical, not just close: a different summation order changes roundings, and a greedy token then
changes in some sequences (measured: a plain ``x @ A.T`` GEMM changed 5-9 of 32 sequences). So every sum runs
in the order vLLM's ops run it:
- shrink (fp32): vLLM's einsum is one gemv per token over that token's gathered rows; here a ``bmm`` with one
  token per batch runs the same gemv per token over the shared or stacked rows (no gather). MKL
  takes a gemv's rows in blocks of four and sums a trailing partial block differently, so each slot's rows
  are rounded up to a multiple of 8 (zero rows of vLLM's padding): a row's sum does not depend on its
  neighbours, so truncating to the real rank and fusing slots and slices changes no bit.
- expand (bf16): oneDNN sums a row's products in the same order for one token or many and exact zeros
  (other slots' masked columns, padding) add nothing, so one matmul over many tokens, or a per-token bmm
  over a slot's real rank, gives vLLM's per-token result. For other dtypes (fp32 models) that does not hold
  and :func:`_exact_linear` runs vLLM's per-token einsums on each slot's rows (still no gather).
Tested bit for bit against vLLM's ops (tests/unit/test_cpu_lora_grouped.py) and token for token on the real
engine (tests/integration/test_lora_batch_regression.py, bench/cpu_lora.py).
"""

from __future__ import annotations

from typing import Any

_GROUPS = "_rmn_slot_groups"
_RANKS = "_rmn_slot_ranks"
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
    import torch

    a = lora_a[slot, 0] if lora_a.dim() == 4 else lora_a[slot]
    ints = {2: torch.int16, 4: torch.int32}.get(a.element_size())
    if ints is None:
        nonzero = (a != 0).any(dim=1).nonzero()
    else:  # a row's largest bit pattern: one pass, 3x faster than a float compare (matters on every refill)
        nonzero = (a.view(ints).abs().amax(dim=1) > 0).nonzero()  # -0.0 is INT_MIN: abs keeps it < 0
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


# a slot with this many tokens in a batch runs alone (its weights read once for all of them); below, its tokens
# join the batched per-token path, which repeats a slot's weights for each of its tokens
_ALONE_TOKENS = 4
# up to this many stacked rows (fp32: 576 KiB at hidden 576, cache-resident), tokens batched together read all
# slots' rows and keep their own (one masked shrink); beyond, each reads only its own slot's rows
_DENSE_MAX_COLS = 256
_BATCHES_KEPT = 8  # stacked weights kept per layer for this many slot sets (older ones are rebuilt on demand)
_FUSED_BUDGET = 256 << 20  # bytes of stacked weights across all layers; beyond it every cache starts over
_FUSED: dict[str, Any] = {"bytes": 0, "caches": []}
# MKL's gemv takes a matrix's rows four at a time (AVX-512) and sums a trailing partial block in another order;
# 8 keeps whole blocks for 4 or 8 (rank-8 adapters stay at 8 rows)
_ROW_BLOCK = 8
# whether the fused path is bit-identical to vLLM's ops on this CPU/MKL/oneDNN (checked once by _probe)
_FUSED_EXACT: dict[str, bool] = {}


def _rows(a: Any, slot: int) -> int:
    """The rows of ``A[slot]`` that enter the fused shrink: the real rank rounded up to whole row blocks
    (zero rows, still inside vLLM's zero-padded buffer), so every real row keeps the summation order it has
    in vLLM's per-token gemv over the full padded buffer."""
    rank = slot_rank(a, slot)
    return min(-(-rank // _ROW_BLOCK) * _ROW_BLOCK, a.shape[-2]) if rank else 0


def _slot_part(lora_a: tuple[Any, ...], lora_b: tuple[Any, ...], slot: int) -> Any:
    """One slot's weights across every slice: ``(A, Bs)`` with ``A`` [cols, in] fp32 (slice-major; each
    slice's rows from :func:`_rows`) and ``Bs[i]`` [size_i, rows_i] (None for an untouched slice); None when
    the slot touches no slice.
    Cached on the layer's first A buffer per slot until vLLM refills it: at most one entry per slot, so
    these fp32 copies hold at most twice vLLM's own bf16 slot buffers."""
    import torch

    parts: dict[int, tuple[int, Any]] | None = getattr(lora_a[0], "_rmn_parts", None)
    if parts is None:
        parts = {}
        lora_a[0]._rmn_parts = parts
    generation = _SLOT_GENERATIONS.get(slot, 0)
    hit = parts.get(slot)
    if hit is not None and hit[0] == generation:
        return hit[1]
    a_parts, b_parts = [], []
    for a, b in zip(lora_a, lora_b, strict=True):
        rows = _rows(a, slot)
        if rows:
            a_parts.append(a[slot, 0, :rows] if a.dim() == 4 else a[slot, :rows])
            b_parts.append((b[slot, 0, :, :rows] if b.dim() == 4 else b[slot, :, :rows]).contiguous())
        else:
            b_parts.append(None)
    part = (torch.cat(a_parts).float(), b_parts) if a_parts else None
    parts[slot] = (generation, part)
    return part


def _stacked(lora_a: tuple[Any, ...], lora_b: tuple[Any, ...], slots: tuple[int, ...]) -> Any:
    """The weights of ``slots`` (each touching some slice), every slot's rows of slice i zero-padded to
    ``R_i`` (their most over the slots; whole row blocks), ``R = sum(R_i)``, in one of two forms:

    - masked (``S * R <= _DENSE_MAX_COLS``): ``(A, Bs, owner)`` in :func:`_expand`'s layout, ``A`` [S*R, in] fp32
      slice-major then slot, ``Bs[i]`` [size_i, S*R_i] and ``owner`` [S*R] (each row's slot);
    - per token: ``(A, Bs, None)`` with ``A`` [S, R, in] fp32 (slice-major within a slot) and ``Bs[i]``
      [S, size_i, R_i].

    ``Bs[i]`` is None for a slice no slot touches. Built from the slots' parts (:func:`_slot_part`) and cached on
    the layer's first A buffer per slot set (and form) until vLLM refills one of the slots."""
    import torch

    batches: dict[tuple[Any, ...], Any] | None = getattr(lora_a[0], "_rmn_fused", None)
    if batches is None:
        batches = {}
        lora_a[0]._rmn_fused = batches
        _FUSED["caches"].append(batches)
    key = (slots, tuple(_SLOT_GENERATIONS.get(s, 0) for s in slots), _DENSE_MAX_COLS)
    if key in batches:
        return batches[key]
    parts = [_slot_part(lora_a, lora_b, slot) for slot in slots]
    most = [
        max(0 if part[1][i] is None else part[1][i].shape[1] for part in parts) for i in range(len(lora_b))
    ]
    n, total = len(slots), sum(most)
    starts = [sum(most[:i]) for i in range(len(most))]
    masked = n * total <= _DENSE_MAX_COLS
    a_all = torch.zeros(n * total, lora_a[0].shape[-1], dtype=torch.float32)
    b_all: list[Any] = [
        None
        if not r_i
        else torch.zeros(*((b.shape[-2], n * r_i) if masked else (n, b.shape[-2], r_i)), dtype=b.dtype)
        for b, r_i in zip(lora_b, most, strict=True)
    ]
    for j, (a_s, bs) in enumerate(parts):
        src = 0
        for i, b_s in enumerate(bs):
            if b_s is None:
                continue
            r = b_s.shape[1]
            row = n * starts[i] + j * most[i] if masked else j * total + starts[i]
            a_all[row : row + r] = a_s[src : src + r]
            if masked:
                b_all[i][:, j * most[i] : j * most[i] + r] = b_s
            else:
                b_all[i][j, :, :r] = b_s
            src += r
    stacked: tuple[Any, list[Any], Any] = (a_all.view(n, total, -1), b_all, None)
    if masked:
        stacked = (a_all, b_all, torch.cat([torch.tensor(slots).repeat_interleave(r_i) for r_i in most]))
    for old in [k for k in batches if k[0] == slots] + list(batches)[
        : max(0, len(batches) - _BATCHES_KEPT + 1)
    ]:
        _FUSED["bytes"] -= _nbytes(batches.pop(old, None))  # a stale fill of these slots, or the oldest
    size = _nbytes(stacked)
    if _FUSED["bytes"] + size > _FUSED_BUDGET:
        for cache in _FUSED["caches"]:
            cache.clear()
        _FUSED["bytes"] = 0
    batches[key] = stacked
    _FUSED["bytes"] += size
    return stacked


def _nbytes(stacked: Any) -> int:
    """Bytes held by one cached entry (0 for None)."""
    if stacked is None:
        return 0
    a_all, b_all, owner = stacked
    return sum(int(t.nbytes) for t in (a_all, *b_all, owner) if t is not None)


def grouped_lora_linear(
    y: Any,
    x: Any,
    groups: list[tuple[int, Any]],
    lora_a: tuple[Any, ...],
    lora_b: tuple[Any, ...],
    scale: float,
    output_slices: tuple[int, ...],
    indices: Any = None,
) -> None:
    """``y[:, slice_i] += scale * x @ A_i[slot].T @ B_i[slot].T`` per token's slot, bit-identical to vLLM's
    per-token ops (see the module docstring; ``indices``: the per-token slots ``groups`` came from, which lets
    slots share one masked shrink/expand; without it every slot runs alone)."""
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.view(-1, y.shape[-1])
    if not groups:
        return
    if not _fast_dtype(y2) or lora_a[0].shape[-2] % _ROW_BLOCK or not _FUSED_EXACT.get("ok", True):
        _exact_linear(y2, x2, groups, lora_a, lora_b, scale, output_slices)
        return
    if len(groups) == 1 and groups[0][1] is None:  # every token has the same adapter
        part = _slot_part(lora_a, lora_b, groups[0][0])
        if part is not None:
            _expand(y2, _shrink(x2, part[0]), part[1], output_slices, scale, None)
        return
    alone, together = _split(groups, lora_a, lora_b) if indices is not None else (groups, [])
    if together:
        stacked = _stacked(lora_a, lora_b, tuple(s for s, _ in together))
        _together(y2, x2, indices, together, bool(alone), stacked, scale, output_slices)
    for slot, rows in alone:  # one shrink/expand on the slot's own rows, its weights shared by its tokens
        part = _slot_part(lora_a, lora_b, slot)
        if part is not None:
            _expand(y2, _shrink(x2.index_select(0, rows), part[0]), part[1], output_slices, scale, rows)


def _together(
    y2: Any,
    x2: Any,
    indices: Any,
    together: list[tuple[int, Any]],
    alone: bool,
    stacked: Any,
    scale: float,
    output_slices: tuple[int, ...],
) -> None:
    """The slots with few tokens each (decodes) in one batched shrink and one batched expand per slice.
    Up to :data:`_DENSE_MAX_COLS` stacked rows: every token against all of them (one gemv per token over shared
    weights), other slots' columns masked to zero, one expand matmul per slice (``alone``: other slots run
    alone, so only these slots' tokens are taken). Beyond: every token against its own slot's rows only
    (viewed, or repeated when a slot has several tokens), vLLM's per-token gemv and per-token bmm."""
    import torch

    a_sm, b_sm, owner = stacked
    if owner is not None:  # few rows: every token reads them all (cache-resident) and keeps its own slot's
        rows, xs, slots = None, x2, indices.reshape(-1)
        if alone:  # only the tokens of these slots
            rows = torch.cat([r for _, r in together])
            xs, slots = x2.index_select(0, rows), slots.index_select(0, rows)
        h = _shrink(xs, a_sm)  # [n, S*R]: every token against every slot
        h *= owner.unsqueeze(0) == slots.unsqueeze(1)  # a token keeps its own slot's columns only
        _expand(y2, h, b_sm, output_slices, scale, rows)
        return
    rows = torch.cat([r for _, r in together])  # tokens in slot order
    counts = [r.shape[0] for _, r in together]
    xs = x2.index_select(0, rows)
    if any(c != 1 for c in counts):
        repeats = torch.tensor(counts)
        a_sm = a_sm.repeat_interleave(repeats, dim=0)
        b_sm = [None if b is None else b.repeat_interleave(repeats, dim=0) for b in b_sm]
    h = torch.bmm(xs.float().unsqueeze(1), a_sm.transpose(1, 2))  # [n, 1, R]
    _expand(y2, h, b_sm, output_slices, scale, rows)


def _add_rows(target: Any, out: Any, rows: Any) -> None:
    """``target[rows] += out`` (every row when ``rows`` is None), one rounding in target's dtype like vLLM's."""
    if rows is None:
        target += out
    else:
        target.index_add_(0, rows, out)


def _split(
    groups: list[tuple[int, Any]], lora_a: tuple[Any, ...], lora_b: tuple[Any, ...]
) -> tuple[list[tuple[int, Any]], list[tuple[int, Any]]]:
    """``(alone, together)``: slots with at least :data:`_ALONE_TOKENS` tokens (a prefill chunk) run on their
    own rows with their weights shared by those tokens; the others batch together (:func:`_together`), where
    each token reads its own slot's weights; slots that touch none of this layer's slices drop out."""
    alone: list[tuple[int, Any]] = []
    together: list[tuple[int, Any]] = []
    for slot, rows in groups:
        if _slot_part(lora_a, lora_b, slot) is not None:
            (alone if rows.shape[0] >= _ALONE_TOKENS else together).append((slot, rows))
    return alone, together


def _fast_dtype(y2: Any) -> bool:
    """The fused expand is bit-identical to vLLM's per-token one in bf16 (oneDNN sums a row's products in the
    same order for one token or many); other dtypes take :func:`_exact_linear`."""
    import torch

    return bool(y2.dtype == torch.bfloat16)


def _shrink(x2: Any, a_all: Any) -> Any:
    """``x2 @ a_all.T`` in fp32 [n, cols] with vLLM's per-token arithmetic: one batched matmul whose every
    batch is one token times the shared weights (broadcast, no copy), i.e. the gemv vLLM's einsum runs per
    token, over all slots and slices at once."""
    import torch

    n = x2.shape[0]
    return torch.bmm(x2.float().unsqueeze(1), a_all.T.unsqueeze(0).expand(n, -1, -1)).view(n, -1)


def _expand(
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
            _add_rows(y2[:, offset : offset + size], out.view(h.shape[0], size), rows)
            col += b.shape[-1]
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
    """The grouping on 2-D ``y2``/``x2`` for y dtypes other than bf16: each slot's rows through vLLM's own
    per-token einsums (fp32 shrink, expand in y's dtype) on the slot's full padded weights broadcast without a
    copy; bit-identical to vLLM's ops, slower than the fused path."""
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
            _add_rows(y2[:, offset : offset + size], out, rows)
            offset += size


def _wrapper_class() -> Any:
    """vLLM's CPU punica wrapper class (patched at runtime, hence Any), or None in a vLLM without one."""
    try:
        from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    except ImportError:
        return None
    return PunicaWrapperCPU


def probe() -> bool:
    """Check once per process that the fused path gives vLLM's bits on this machine (its exactness rests on
    how this CPU's MKL and oneDNN order their sums): a few bf16 batches of mixed slots, real ranks and
    no-adapter tokens against vLLM's masked per-token ops. False: every call takes :func:`_exact_linear`
    (bit-identical by construction, slower) and a warning says so."""
    global _DENSE_MAX_COLS
    if "ok" in _FUSED_EXACT:
        return _FUSED_EXACT["ok"]
    import logging

    import torch

    import serving.engines.masked_ops as masked_ops

    _FUSED_EXACT["ok"] = True  # the probe itself runs the fused path
    g = torch.Generator().manual_seed(0)
    ok = True
    slices, hidden, ranks = (96, 32, 32), 96, (8, 5, 64, 21)
    lora_a = tuple(torch.zeros(len(ranks), 1, 64, hidden, dtype=torch.bfloat16) for _ in slices)
    lora_b = tuple(torch.zeros(len(ranks), 1, size, 64, dtype=torch.bfloat16) for size in slices)
    for slot, rank in enumerate(ranks):
        for a, b in zip(lora_a, lora_b, strict=True):
            a[slot, 0, :rank] = torch.randn(rank, hidden, generator=g).div(hidden**0.5)
            b[slot, 0, :, :rank] = torch.randn(b.shape[2], rank, generator=g)
    for tokens in (1, 7, 40, 300):
        x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
        y = torch.randn(tokens, sum(slices), generator=g).to(torch.bfloat16)
        idx = torch.randint(-1, len(ranks), (tokens,), generator=g)
        want, offset = y.clone(), 0
        for a, b, size in zip(lora_a, lora_b, slices, strict=True):
            buf = torch.zeros(tokens, 64, dtype=torch.float32)
            masked_ops.bgmv_shrink(x, a, buf, idx, 0.5)
            masked_ops.bgmv_expand_slice(buf, b, want, idx, offset, size, add_inputs=True)
            offset += size
        for dense_max in (0, 1 << 30):  # both batched forms: own rows, every slot's rows masked
            kept, _DENSE_MAX_COLS = _DENSE_MAX_COLS, dense_max
            try:
                got = y.clone()
                grouped_lora_linear(got, x, slot_groups(idx), lora_a, lora_b, 0.5, slices, indices=idx)
            finally:
                _DENSE_MAX_COLS = kept
            ok = ok and bool(torch.equal(got, want))
    _FUSED_EXACT["ok"] = ok
    if not ok:
        logging.getLogger(__name__).warning(
            "grouped CPU LoRA: the fused path is not bit-identical to vLLM's ops on this CPU; "
            "using the per-token arithmetic (exact, slower)"
        )
    return ok


def install() -> bool:
    """Patch vLLM's CPU punica wrapper (idempotent) after :func:`probe`; False when this vLLM has none."""
    PunicaWrapperCPU = _wrapper_class()
    if PunicaWrapperCPU is None:
        return False
    probe()
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
