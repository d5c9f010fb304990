"""Is the fused path bit-identical to vLLM's ops for one layer shape on this CPU, and how far are the fused
and the compact arithmetic from float64? Measured, not assumed.

oneDNN and MKL choose their blocking, and so the order of a dot product's sums, per ISA and per shape: a
matmul over many tokens can sum in another order than vLLM's per-token einsum on one CPU (Intel AMX, or any
CPU with ``ONEDNN_MAX_CPU_ISA=AVX2``) and in the same order on another (AMD Zen 4).
:func:`serving.engines.cpu_lora.grouped.check_shape` runs
the fused path against vLLM's masked per-token ops on random weights of the layer's real shape (its input
size, output slices, padded rank and slot count; real ranks 1..r_max) at token counts up to the engine's
batch limit, each count in several slot mixes (one token per slot, shared slots, a prefill chunk among
decodes, random mixes with tokens without an adapter) and both batched layouts. It also measures both
against float64: where the bits differ, the fused path may still serve the layer (``grouped`` mode) if its
error stays within :data:`ERROR_FACTOR` times vLLM's own at every probed count (it is a few ulps of y either
way); ``exact`` mode leaves such a layer to vLLM's ops. In ``compact`` mode the probe also runs the compact
arithmetic (:func:`.arithmetic.compact`, never vLLM's bits) on the same points, in its three layouts, and that
serves every layer whose error stays within the same bound.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

# token counts probed: every count a decode step of up to 16 sequences can have, then prefill-sized ones
_SMALL = list(range(1, 17))
_LARGE = [24, 32, 40, 48, 64, 96, 128, 192, 256, 300, 384, 512]
# a layer whose bits differ from vLLM's is served by the grouped arithmetic (``grouped`` mode) only while its
# largest error against float64 over every probed count and mix is at most this times vLLM's own there
ERROR_FACTOR = 2.0


@dataclass(frozen=True)
class LayerShape:
    """What decides a layer's arithmetic: input size, output slices, vLLM's padded rank, slots, dtype."""

    hidden: int
    slices: tuple[int, ...]
    r_max: int
    slots: int
    dtype: str


@dataclass
class ShapeCheck:
    """The probe's verdict for one layer shape (``mismatched``: token counts where some mix differed)."""

    shape: LayerShape
    tokens: list[int]
    mismatched: list[int] = field(default_factory=list)
    fused_error: float = 0.0  # max |fused - float64| over every probed element
    vllm_error: float = 0.0  # max |vLLM's ops - float64| on the same data
    # max |compact arithmetic - float64| on the same data (None: not probed)
    compact_error: float | None = None
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        """Bit-identical to vLLM's ops at every probed token count and mix."""
        return not self.mismatched

    @property
    def bounded(self) -> bool:
        """The fused path's error against float64 within :data:`ERROR_FACTOR` times vLLM's own (every probed
        count and mix; a float32 rounding's slack for shapes where both are exact)."""
        return self.fused_error <= ERROR_FACTOR * self.vllm_error + 1e-6

    @property
    def compact_bounded(self) -> bool:
        """The compact arithmetic was probed and its error against float64 is within :data:`ERROR_FACTOR` times
        vLLM's own."""
        return self.compact_error is not None and self.compact_error <= ERROR_FACTOR * self.vllm_error + 1e-6

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["identical"] = self.identical
        out["bounded"] = self.bounded
        out["compact_bounded"] = self.compact_bounded
        return out


def token_counts(max_tokens: int) -> list[int]:
    """The token counts probed for an engine whose batches hold up to ``max_tokens`` tokens."""
    return [n for n in _SMALL + _LARGE if n <= max_tokens]


def machine() -> dict[str, str]:
    """The CPU the verdicts hold for: its model name, torch's CPU capability and the ISA caps in force."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return {
        "cpu": name,
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "mkl_enable_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", ""),
        "threads": str(torch.get_num_threads()),
    }


def padded_weights(shape: LayerShape, ranks: list[int], g: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """vLLM's stacked buffers for ``shape``: each slot's adapter at its real rank, zero-padded to r_max."""
    import torch

    dtype = getattr(torch, shape.dtype)
    lora_a = tuple(torch.zeros(shape.slots, 1, shape.r_max, shape.hidden, dtype=dtype) for _ in shape.slices)
    lora_b = tuple(torch.zeros(shape.slots, 1, size, shape.r_max, dtype=dtype) for size in shape.slices)
    for slot, rank in enumerate(ranks):
        for a, b in zip(lora_a, lora_b, strict=True):
            a[slot, 0, :rank] = torch.randn(rank, shape.hidden, generator=g).div(shape.hidden**0.5)
            b[slot, 0, :, :rank] = torch.randn(b.shape[2], rank, generator=g).div(max(rank, 1) ** 0.5)
    return lora_a, lora_b


def mixes(tokens: int, slots: int, g: Any) -> list[Any]:
    """Slot indices for ``tokens`` tokens in the mixes a serving step has (-1: no adapter)."""
    import torch

    out = [torch.randint(-1, slots, (tokens,), generator=g)]
    if tokens <= slots:
        out.append(torch.randperm(slots, generator=g)[:tokens])  # one decode per slot
    if tokens > slots + 4:  # a prefill chunk of one slot among one decode per slot
        chunk = torch.full((tokens - slots,), int(torch.randint(0, slots, (1,), generator=g)))
        out.append(torch.cat([chunk, torch.arange(-1, slots - 1)]))
    return out


def vllm_reference(y: Any, x: Any, idx: Any, lora_a: Any, lora_b: Any, scale: float, slices: Any) -> Any:
    """vLLM's CPU ``add_lora_linear`` with the masked bgmv ops: fp32 shrink buffer, expand in y's dtype."""
    import torch

    from serving.engines.masked_ops import bgmv_expand_slice, bgmv_shrink

    out, offset = y.clone(), 0
    for a, b, size in zip(lora_a, lora_b, slices, strict=True):
        buf = torch.zeros(x.shape[0], a.shape[-2], dtype=torch.float32)
        bgmv_shrink(x, a, buf, idx, scale)
        bgmv_expand_slice(buf, b, out, idx, offset, size, add_inputs=True)
        offset += size
    return out


def float64_reference(y: Any, x: Any, idx: Any, lora_a: Any, lora_b: Any, scale: float, slices: Any) -> Any:
    """The same sum in float64, one slot group at a time."""
    out = y.double().clone()
    for slot in idx.unique().tolist():
        if slot < 0:
            continue
        rows = (idx == slot).nonzero().squeeze(1)
        offset = 0
        for a, b, size in zip(lora_a, lora_b, slices, strict=True):
            h = scale * (x[rows].double() @ a[slot, 0].double().T)
            out[rows, offset : offset + size] += h @ b[slot, 0].double().T
            offset += size
    return out
