"""Random PEFT LoRA adapters for a base model: test fixtures and benchmarks, never product output.

Contract: ``make_random_adapter(base_dir, out_dir, seed, rank, alpha, target_modules, scale, rslora)`` writes a
PEFT adapter directory whose B matrices are random (PEFT initialises B to zero, which would make an
adapter a no-op). The same seed gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def make_random_adapter(
    base_dir: Path | str,
    out_dir: Path | str,
    seed: int,
    rank: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    scale: float = 0.2,
    rslora: bool = False,
) -> Path:
    """Write a random LoRA adapter for the model in ``base_dir`` to ``out_dir``; returns ``out_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0, use_rslora=rslora
    )
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    out = Path(out_dir)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
