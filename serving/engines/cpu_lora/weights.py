"""The slot weights the grouped path reads, cut to each slot's real rank and cached per layer.

vLLM zero-pads every slot to ``max_lora_rank`` (64 for 4-adapter stacks: a rank-8 adapter is 7/8 zeros) and
zero-fills the slices of modules an adapter does not target. :meth:`SlotWeights.rank` reads a slot's real rank
once per fill; :meth:`SlotWeights.part` keeps a slot's rows of every slice in fp32 (``P_s``) and
:meth:`SlotWeights.stacked` the weights of a set of slots in the two batched layouts. Everything is keyed by
the layer's buffers and the adapter id in each slot: when vLLM puts another adapter into a slot
(:meth:`SlotWeights.set_slots`, from the wrapper's ``update_metadata``) that slot's entries are stale. vLLM's
serving layer never reuses an adapter id for other weights, so an unchanged id means unchanged weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# MKL's gemv takes a matrix's rows four at a time (AVX-512) and sums a trailing partial block in another order;
# 8 keeps whole blocks for 4 or 8 (rank-8 adapters stay at 8 rows)
ROW_BLOCK = 8


@dataclass
class _Layer:
    """One layer's cached entries; ``buffers`` keeps the keyed tensors alive (so their ids stay theirs)."""

    buffers: list[Any]
    ranks: dict[tuple[int, int], tuple[Any, int]] = field(
        default_factory=dict
    )  # (buffer id, slot) -> (gen, r)
    parts: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # slot -> (gen, part)
    stacked: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # (slots, gens, form) -> stacked
    slot_rows: tuple[tuple[Any, ...], tuple[tuple[int, ...], ...]] | None = None  # (every slot's gen, rows)


# the compact arithmetic's entry of all held slots (:meth:`SlotWeights.held`) up to this many stacked rows: 8 slots
# of rank-32 q/v compositions (bf16 at hidden 576: 0.6 MiB for A, 0.9 MiB for B, as much again packed)
HELD_MAX_COLS = 512
# ... packed on this use: through Serve requests come and go one at a time, and every slot refill drops the packed
# copies (32 compositions with staggered lengths, in-process, when refills rebuilt the entry: packed on use 1 cost
# more than no held entry, on use 8 it gained 5-12 %, on use 16 nothing)
HELD_PACK_AT_USE = 8

# a masked compact entry is packed for oneDNN (vLLM's own CPU GEMM, the one its linear layers use) on this use:
# packing costs about as much as 15 calls save, so slot sets that come and go (many compositions) stay unpacked
PACK_AT_USE = 16


@dataclass
class CompactEntry:
    """A slot set's weights for :func:`.arithmetic.compact`: ``a`` [S*R, in] and ``b`` [out, S*R] with
    ``owner`` [S*R] (masked form), or ``a`` [S, R, in] and ``b`` [S, out, R] with ``owner`` None (per token: the
    arithmetic takes it for one slot only);
    ``packed``: both matrices packed for vLLM's oneDNN GEMM once the entry has been used ``pack_at_use`` times
    (masked form, where vLLM has it; 0: never), released with the entry; ``packed_bytes``: their size, counted
    (through ``on_pack``, set while a :class:`SlotWeights` cache holds the entry) in its byte budget;
    ``layout``: where each slot's rows are (masked form: slot j's rows of slice i from
    ``S * sum(layout[:i]) + j * layout[i]``, in ``a``'s rows and ``b``'s columns)."""

    a: Any
    b: Any
    owner: Any
    pack_at_use: int = PACK_AT_USE  # 0: never
    uses: int = 0
    packed: tuple[Any, Any] | None = None
    packed_bytes: int = 0
    on_pack: Callable[[int], None] | None = None
    layout: tuple[int, ...] = ()  # masked form: each slot's rows per slice (its block's height in ``a``)

    def block(self, j: int, i: int) -> int:
        """Masked form: the first row of ``a`` (and column of ``b``) of the ``j``-th slot's rows of slice ``i``."""
        return int(self.owner.shape[0]) // sum(self.layout) * sum(self.layout[:i]) + j * self.layout[i]

    def matrices(self) -> tuple[Any, Any] | None:
        """The packed matrices once this entry is used often enough (counting this use), else None."""
        self.uses += 1
        if self.uses == self.pack_at_use and self.owner is not None:
            self.packed = _pack(self.a, self.b)
            if self.packed is not None:  # oneDNN's blocked copies: about the plain matrices' bytes
                self.packed_bytes = int(self.a.nbytes + self.b.nbytes)
                if self.on_pack is not None:
                    self.on_pack(self.packed_bytes)
        return self.packed


def _pack(a: Any, b: Any) -> tuple[Any, Any] | None:
    """(A, B) as vLLM's oneDNN GEMM handlers (``x @ A.T``, ``h @ B.T``), None where vLLM has none."""
    try:
        from vllm import _custom_ops as ops
    except ImportError:
        return None
    if not getattr(ops, "_supports_onednn", False):
        return None
    try:
        return ops.create_onednn_mm(a.t(), 32), ops.create_onednn_mm(b.t(), 32)
    except RuntimeError:  # a dtype or shape oneDNN refuses: torch's matmul serves it
        return None


def nbytes(stacked: Any) -> int:
    """Bytes held by one stacked entry (0 for None)."""
    if stacked is None:
        return 0
    if isinstance(stacked, CompactEntry):
        plain = (stacked.a, stacked.b, stacked.owner)
        return sum(int(t.nbytes) for t in plain if t is not None) + stacked.packed_bytes
    a_all, b_all, owner = stacked
    return sum(int(t.nbytes) for t in (a_all, *b_all, owner) if t is not None)


class SlotWeights:
    """Per-layer caches of slot weights, bounded: at most one part per slot and layer (so the fp32 copies hold
    at most twice vLLM's own bf16 slot buffers), ``batches_kept`` stacked slot sets per layer, and
    ``budget_bytes`` of stacked weights over all layers (beyond it every stacked cache starts over)."""

    def __init__(
        self,
        *,
        budget_bytes: int = 256 << 20,
        batches_kept: int = 8,
        dense_max_cols: int = 256,
        pack_at_use: int = PACK_AT_USE,
        held_max_cols: int = HELD_MAX_COLS,
    ):
        self.budget_bytes = budget_bytes
        self.batches_kept = batches_kept
        # up to this many stacked rows (fp32: 576 KiB at hidden 576, cache-resident), tokens batched together
        # read all slots' rows and keep their own (one masked shrink); beyond, each reads only its own
        self.dense_max_cols = dense_max_cols
        self.pack_at_use = pack_at_use  # a masked compact entry is packed on this use (0: never)
        # the compact arithmetic stacks every slot holding a layer's weights into one entry up to this many rows
        # (see :meth:`held`): one entry per layer for every batch until a slot is refilled (0: never)
        self.held_max_cols = held_max_cols
        self.stacked_bytes = 0
        self._layers: dict[int, _Layer] = {}
        self._generation: dict[int, Any] = {}  # slot -> the adapter id vLLM put there (or a fill count)

    # ---- slot contents ------------------------------------------------------------------------------
    def set_slots(self, ids: Sequence[int | None]) -> None:
        """The adapter id in each slot now (vLLM's ``lora_index_to_id``): a changed id makes the slot's cached
        weights stale."""
        for slot, lora_id in enumerate(ids):
            if lora_id is not None:
                self._generation[slot] = ("id", lora_id)

    def refilled(self, slot: int) -> None:
        """Note that ``slot`` holds new weights (for callers without adapter ids, e.g. tests)."""
        previous = self._generation.get(slot)
        count = previous[1] + 1 if isinstance(previous, tuple) and previous[0] == "fill" else 1
        self._generation[slot] = ("fill", count)

    def _layer(self, lora_a: tuple[Any, ...]) -> _Layer:
        layer = self._layers.get(id(lora_a[0]))
        if layer is None:
            layer = self._layers[id(lora_a[0])] = _Layer(buffers=list(lora_a))
        return layer

    # ---- one slot -----------------------------------------------------------------------------------
    def rank(self, lora_a: Any, slot: int, layer: _Layer | None = None) -> int:
        """How many leading rows of ``A[slot]`` (``[slots, 1, r_max, in]``) hold nonzero weights: the slot's
        effective rank in this buffer (0 when the adapter does not touch this module/slice)."""
        layer = layer or self._layer((lora_a,))
        generation = self._generation.get(slot)
        hit = layer.ranks.get((id(lora_a), slot))
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
        if all(b is not lora_a for b in layer.buffers):
            layer.buffers.append(lora_a)
        layer.ranks[(id(lora_a), slot)] = (generation, rank)
        return rank

    def rows(self, a: Any, slot: int, layer: _Layer | None = None) -> int:
        """The rows of ``A[slot]`` that enter the fused shrink: the real rank rounded up to whole row blocks
        (zero rows, still inside vLLM's zero-padded buffer), so every real row keeps the summation order it
        has in vLLM's per-token gemv over the full padded buffer."""
        rank = self.rank(a, slot, layer)
        return min(-(-rank // ROW_BLOCK) * ROW_BLOCK, a.shape[-2]) if rank else 0

    def part(self, lora_a: tuple[Any, ...], lora_b: tuple[Any, ...], slot: int) -> Any:
        """One slot's weights across every slice: ``(A, Bs)`` with ``A`` [cols, in] fp32 (slice-major; each
        slice's rows from :meth:`rows`) and ``Bs[i]`` [size_i, rows_i] (None for an untouched slice); None
        when the slot touches no slice."""
        import torch

        layer = self._layer(lora_a)
        generation = self._generation.get(slot)
        hit = layer.parts.get(slot)
        if hit is not None and hit[0] == generation:
            return hit[1]
        a_parts, b_parts = [], []
        for a, b in zip(lora_a, lora_b, strict=True):
            rows = self.rows(a, slot, layer)
            if rows:
                a_parts.append(a[slot, 0, :rows] if a.dim() == 4 else a[slot, :rows])
                b_parts.append((b[slot, 0, :, :rows] if b.dim() == 4 else b[slot, :, :rows]).contiguous())
            else:
                b_parts.append(None)
        part = (torch.cat(a_parts).float(), b_parts) if a_parts else None
        layer.parts[slot] = (generation, part)
        return part

    # ---- a set of slots -----------------------------------------------------------------------------
    def stacked(self, lora_a: tuple[Any, ...], lora_b: tuple[Any, ...], slots: tuple[int, ...]) -> Any:
        """The weights of ``slots`` (each touching some slice), every slot's rows of slice i zero-padded to
        ``R_i`` (their most over the slots), ``R = sum(R_i)``, in one of two forms:

        - masked (``S * R <= dense_max_cols``): ``(A, Bs, owner)``, ``A`` [S*R, in] fp32 slice-major then slot,
          ``Bs[i]`` [size_i, S*R_i] and ``owner`` [S*R] (each row's slot);
        - per token: ``(A, Bs, None)`` with ``A`` [S, R, in] fp32 (slice-major within a slot) and ``Bs[i]``
          [S, size_i, R_i].

        ``Bs[i]`` is None for a slice no slot touches. Cached per layer and slot set until a slot is refilled. The
        per-token form is made once for every slot holding the layer's weights: a subset padded alike gets a copy
        of its slots' blocks, a refill that keeps the padding rewrites the slot's blocks in place
        (:meth:`_rewrite`) — sets that change with every few requests (32 compositions through 8 slots) build
        nothing."""
        layer = self._layer(lora_a)
        key = (slots, tuple(self._generation.get(s) for s in slots), self.dense_max_cols)
        if key in layer.stacked:
            return layer.stacked[key]
        if not self.masked(lora_a, slots):  # per token: from the entry of every slot holding weights
            every = tuple(s for s, rows in enumerate(self.slot_rows(lora_a)) if any(rows))
            if (
                slots != every
                and set(slots) <= set(every)
                and self._most(lora_a, slots) == self._most(lora_a, every)
            ):
                # a copy of these slots' blocks, laid out as their own build would be (the same bytes)
                import torch

                a_all, b_all, _ = self.stacked(lora_a, lora_b, every)
                at = torch.tensor([every.index(s) for s in slots])
                return (
                    a_all.index_select(0, at),
                    [None if b is None else b.index_select(0, at) for b in b_all],
                    None,
                )
            entry = self._rewritten(  # a refill: that slot's blocks rewritten in place
                layer, key, lambda e, was, now: self._rewrite(e, lora_a, lora_b, slots, was, now)
            )
            if entry is not None:
                return entry
        stacked = self._build(lora_a, lora_b, slots)
        self._keep(layer, key, stacked)
        return stacked

    @staticmethod
    def _rewritten(layer: _Layer, key: tuple[Any, ...], rewrite: Callable[[Any, Any, Any], bool]) -> Any:
        """The cached entry of ``key``'s slots and form from an earlier fill, re-keyed once ``rewrite(entry,
        was, now)`` (the generations then and now) has rewritten its refilled slots in place; None where there
        is none or ``rewrite`` refuses (a build then)."""
        for stale, entry in layer.stacked.items():
            if stale[0] == key[0] and stale[2] == key[2]:
                if not rewrite(entry, stale[1], key[1]):
                    return None
                del layer.stacked[stale]
                layer.stacked[key] = entry
                return entry
        return None

    def masked(self, lora_a: tuple[Any, ...], slots: tuple[int, ...]) -> bool:
        """Whether ``slots`` stack into the masked form (at most ``dense_max_cols`` rows: see :meth:`stacked`)."""
        return self.stacked_rows(lora_a, slots) <= self.dense_max_cols

    def held(
        self, lora_a: tuple[Any, ...], lora_b: tuple[Any, ...], batch: tuple[int, ...]
    ) -> tuple[int, ...] | None:
        """Every slot holding weights of this layer, when they stack into at most ``held_max_cols`` rows, their
        entry with its packed copies takes at most a 64th of ``budget_bytes``, and the ``batch``'s own slots
        would stack into at least half as many rows: the compact arithmetic then runs the batch on that one
        masked entry (packed on its :data:`HELD_PACK_AT_USE`-th use), which changes only when a slot is refilled
        (its block rewritten in place), instead of an entry per slot set (sets that come and go with the
        requests: 32 compositions through 8 slots); None otherwise (a batch of a few small adapters beside large
        idle ones, a large model's layer)."""
        per_slot = self.slot_rows(lora_a)
        slots = tuple(s for s, rows in enumerate(per_slot) if any(rows))
        if not slots or not self.held_max_cols:
            return None
        rows = self.stacked_rows(lora_a, slots)
        size = lora_a[0].shape[-1] + sum(b.shape[-2] for b in lora_b)
        if 2 * rows * size * lora_b[0].element_size() > self.budget_bytes // 64:
            return None
        return slots if rows <= min(self.held_max_cols, 2 * self.stacked_rows(lora_a, batch)) else None

    def slot_rows(self, lora_a: tuple[Any, ...]) -> tuple[tuple[int, ...], ...]:
        """Every slot's :meth:`rows` of each slice of this layer (all 0: the slot touches none), read once per
        fill of any slot (a plan asks for them per slot and slot set)."""
        layer = self._layer(lora_a)
        fills = tuple(self._generation.get(s) for s in range(lora_a[0].shape[0]))
        if layer.slot_rows is None or layer.slot_rows[0] != fills:
            was, kept = layer.slot_rows or ((), ())
            rows = tuple(
                kept[s] if s < len(was) and was[s] == fill else tuple(self.rows(a, s, layer) for a in lora_a)
                for s, fill in enumerate(fills)
            )
            layer.slot_rows = (fills, rows)
        return layer.slot_rows[1]

    def _most(self, lora_a: tuple[Any, ...], slots: tuple[int, ...]) -> list[int]:
        """Per slice, the most rows of any of ``slots`` (the rows each slot is padded to when stacked)."""
        per_slot = self.slot_rows(lora_a)
        return [max(per_slot[s][i] for s in slots) for i in range(len(lora_a))]

    def stacked_rows(self, lora_a: tuple[Any, ...], slots: tuple[int, ...]) -> int:
        """The rows of ``slots``' masked form: every slot padded to their most rows per slice."""
        return len(slots) * sum(self._most(lora_a, slots))

    def _build(
        self,
        lora_a: tuple[Any, ...],
        lora_b: tuple[Any, ...],
        slots: tuple[int, ...],
        masked: bool | None = None,
    ) -> Any:
        """Lay the slots' parts out in the masked or the per-token form (see :meth:`stacked`; ``masked``: that
        form whatever their rows)."""
        import torch

        parts = [self.part(lora_a, lora_b, slot) for slot in slots]
        most = [max(0 if p[1][i] is None else p[1][i].shape[1] for p in parts) for i in range(len(lora_b))]
        n, total = len(slots), sum(most)
        starts = [sum(most[:i]) for i in range(len(most))]
        masked = n * total <= self.dense_max_cols if masked is None else masked
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
        if masked:
            return a_all, b_all, torch.cat([torch.tensor(slots).repeat_interleave(r_i) for r_i in most])
        return a_all.view(n, total, -1), b_all, None

    def compact(
        self,
        lora_a: tuple[Any, ...],
        lora_b: tuple[Any, ...],
        slots: tuple[int, ...],
        pack_at_use: int | None = None,
        masked: bool | None = None,
    ) -> CompactEntry:
        """The weights of ``slots`` for the compact arithmetic (:func:`.arithmetic.compact`) in y's dtype (exact
        copies of vLLM's rows), every slice's expand in one matrix over ALL output columns (zero rows for slices
        no slot touches), in :meth:`stacked`'s two forms: masked (``S * R <= dense_max_cols``) or per token.
        Cached beside :meth:`stacked`'s entries (same keys, same bounds; an entry's oneDNN-packed copies, as large
        again, count in ``budget_bytes`` from when they are made). ``pack_at_use``: this entry's (the instance's
        when None; 0 stays never); ``masked``: that form whatever the rows (:meth:`held`'s entry)."""
        import torch

        layer = self._layer(lora_a)
        form = ("compact", self.dense_max_cols, masked)
        key = (slots, tuple(self._generation.get(s) for s in slots), form)
        hit = layer.stacked.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        if masked:  # the held entry after a refill: the refilled slots' blocks rewritten in place
            held = self._rewritten(
                layer, key, lambda e, was, now: self._rewrite(e, lora_a, lora_b, slots, was, now)
            )
            if held is not None:
                return held  # type: ignore[no-any-return]
        a_all, b_all, owner = self._build(lora_a, lora_b, slots, masked)
        dtype = lora_b[0].dtype
        out = sum(b.shape[-2] for b in lora_b)
        cols = a_all.shape[-2]
        b_full = torch.zeros(
            *((out, cols) if owner is not None else (a_all.shape[0], out, cols)), dtype=dtype
        )
        offset = col = 0
        for b_i, b in zip(b_all, lora_b, strict=True):
            size = b.shape[-2]
            if b_i is not None:
                r = b_i.shape[-1]
                b_full[..., offset : offset + size, col : col + r] = b_i
                col += r
            offset += size
        pack = self.pack_at_use if pack_at_use is None or not self.pack_at_use else pack_at_use
        layout = () if owner is None else tuple(0 if b is None else b.shape[-1] // len(slots) for b in b_all)
        entry = CompactEntry(a_all.to(dtype), b_full, owner, pack, layout=layout)
        self._keep(layer, key, entry)
        return entry

    def _rewrite(
        self,
        entry: Any,
        lora_a: tuple[Any, ...],
        lora_b: tuple[Any, ...],
        slots: tuple[int, ...],
        was: tuple[Any, ...],
        now: tuple[Any, ...],
    ) -> bool:
        """Copy the weights of the slots refilled since ``entry`` was made (generations ``was`` -> ``now``) into
        their blocks, in place: vLLM's rows of the slot (zero-padded beyond its rank), zeros after them — one
        slot's rows copied instead of every slot's rebuilt. A compact masked entry drops its packed copies
        (packed again on its ``pack_at_use``-th use from here) and refuses where a refilled slot's rows outgrow
        its block; the fused per-token form ``(A, Bs, None)`` refuses unless its padding is what a build for
        these slots would make now (the fused arithmetic keeps exactly the layout its probe checked: on some
        CPUs the padding decides the order of sums). Refused: False, the entry untouched (a rebuild then)."""
        per_slot = self.slot_rows(lora_a)
        refilled = [j for j, (old, new) in enumerate(zip(was, now, strict=True)) if old != new]
        compact = isinstance(entry, CompactEntry)
        if compact:
            heights = list(entry.layout)
            if not heights or any(
                r > h for j in refilled for r, h in zip(per_slot[slots[j]], heights, strict=True)
            ):
                return False
        else:
            heights = [0 if b is None else b.shape[-1] for b in entry[1]]
            if entry[2] is not None or heights != self._most(lora_a, slots):
                return False
        for j in refilled:
            slot, offset = slots[j], 0
            for i, (a, b, r, h) in enumerate(zip(lora_a, lora_b, per_slot[slot], heights, strict=True)):
                size = b.shape[-2]
                if h:
                    a_s, b_s = (
                        a[slot, 0] if a.dim() == 4 else a[slot],
                        b[slot, 0] if b.dim() == 4 else b[slot],
                    )
                    if compact:
                        at = entry.block(j, i)
                        a_rows, b_cols = entry.a[at : at + h], entry.b[offset : offset + size, at : at + h]
                    else:
                        start = sum(heights[:i])
                        a_rows, b_cols = entry[0][j, start : start + h], entry[1][i][j]
                    a_rows[:r] = a_s[:r]
                    a_rows[r:] = 0
                    b_cols[:, :r] = b_s[:, :r]
                    b_cols[:, r:] = 0
                offset += size
        if compact:
            if entry.packed is not None and entry.on_pack is not None:  # cached: packed bytes counted
                self.stacked_bytes -= entry.packed_bytes
            entry.packed, entry.packed_bytes, entry.uses = None, 0, 0
        return True

    def _keep(self, layer: _Layer, key: tuple[Any, ...], entry: Any) -> None:
        """Cache ``entry`` under ``key``: entries of the same slots from an earlier fill (stale, either form) and
        the oldest beyond ``batches_kept`` go; beyond ``budget_bytes`` over all layers (a compact entry's packed
        copies counted when made) every stacked cache starts over."""
        cache = layer.stacked
        for old in [k for k in cache if k[0] == key[0] and k[1] != key[1]] + list(cache)[
            : max(0, len(cache) - self.batches_kept + 1)
        ]:
            self._release(cache.pop(old, None))
        size = nbytes(entry)
        if self.stacked_bytes + size > self.budget_bytes:
            self._start_over()
        self.stacked_bytes += size
        cache[key] = entry
        if isinstance(entry, CompactEntry):
            entry.on_pack = self._packed

    def _packed(self, size: int) -> None:
        """A cached compact entry made its packed copies (``size`` bytes): counted, or beyond the budget every
        stacked cache (that entry's too) starts over."""
        if self.stacked_bytes + size > self.budget_bytes:
            self._start_over()
        else:
            self.stacked_bytes += size

    def _start_over(self) -> None:
        """Drop every stacked entry of every layer (the budget was reached)."""
        for layer in self._layers.values():
            for entry in layer.stacked.values():
                self._release(entry)
            layer.stacked.clear()
        self.stacked_bytes = 0

    def _release(self, entry: Any) -> None:
        """An entry leaves the cache: its bytes are no longer counted, nor its packed copies if a plan that still
        runs it (until its batch ends) makes them later."""
        if isinstance(entry, CompactEntry):
            entry.on_pack = None
        self.stacked_bytes -= nbytes(entry)

    def layer_entries(self, lora_a: tuple[Any, ...]) -> dict[tuple[Any, ...], Any]:
        """The stacked entries cached for one layer (for tests and stats)."""
        return self._layer(lora_a).stacked
