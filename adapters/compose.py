"""Exact composition of LoRA adapters by rank concatenation.

Maths, per target module (shapes in comments; s_i = w_i * alpha_i / r_i, or w_i * alpha_i / sqrt(r_i) for an
rsLoRA component — the scale folds into A either way):

    delta_W = sum_i s_i * B_i @ A_i                       # B_i: [out, r_i], A_i: [r_i, in]
            = [B_1, ..., B_n] @ [s_1*A_1; ...; s_n*A_n]   # B: [out, R], A: [R, in], R = sum r_i

so the composite has r = lora_alpha = R (scale 1) and applies exactly the sum of the components'
deltas: ``y += (x @ A.T) @ B.T``. A component that lacks a module contributes zero rows/columns there,
so every module keeps rank R (PEFT and vLLM need one rank per adapter). Weights are written in fp32.

Contract: :func:`compose_tensors` is pure (tensors in, tensors out); :func:`compose_to_dir` writes a
normal PEFT adapter directory that PEFT and vLLM both load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import InvalidAdapter

_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


@dataclass(frozen=True)
class Component:
    """One adapter of a stack: its PEFT directory and its weight in the sum."""

    path: Path
    weight: float = 1.0


@dataclass(frozen=True)
class LoraTensors:
    """A loaded PEFT LoRA: per module (A [r, in], B [out, r]), its rank and alpha."""

    modules: dict[str, tuple[Any, Any]]
    rank: int
    alpha: float
    target_modules: list[str]
    rslora: bool = False

    @property
    def scale(self) -> float:
        """PEFT's scaling of ``B @ A``: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


def load_lora(path: Path) -> LoraTensors:
    """Read a PEFT LoRA directory (LoRA or rsLoRA; no DoRA, no per-module rank patterns)."""
    from safetensors.torch import load

    cfg = json.loads((path / "adapter_config.json").read_text())
    if cfg.get("use_dora"):
        raise InvalidAdapter(f"{path.name}: use_dora adapters cannot be composed exactly here")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if cfg.get(pattern):
            raise InvalidAdapter(f"{path.name}: {pattern} is not supported; use one rank for all modules")
    # from bytes, not load_file: safetensors 0.8's mmap reader keeps ~9 KB per call (bench/scale.py's engine
    # replica grew 13 MB/min composing stacks); adapter files are small, reading them whole costs nothing
    tensors = load((path / "adapter_model.safetensors").read_bytes())
    pairs: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        m = _KEY_RE.match(key)
        if m is None:
            raise InvalidAdapter(f"{path.name}: unexpected tensor {key!r} (only lora_A/lora_B weights)")
        pairs.setdefault(m.group("module"), {})[m.group("ab")] = t
    modules = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise InvalidAdapter(f"{path.name}: module {module!r} lacks lora_A or lora_B")
        modules[module] = (ab["A"], ab["B"])
    return LoraTensors(
        modules,
        int(cfg["r"]),
        float(cfg["lora_alpha"]),
        list(cfg.get("target_modules") or []),
        rslora=bool(cfg.get("use_rslora")),
    )


def compose_tensors(parts: Sequence[tuple[LoraTensors, float]]) -> tuple[dict[str, Any], int]:
    """Rank-concatenate ``(lora, weight)`` parts; returns (PEFT state dict in fp32, total rank R)."""
    import torch

    if not parts:
        raise InvalidAdapter("a composition needs at least one component")
    total = sum(lora.rank for lora, _ in parts)
    modules = sorted({m for lora, _ in parts for m in lora.modules})
    out: dict[str, Any] = {}
    for module in modules:
        shapes = {
            (a.shape[1], b.shape[0])
            for lora, _ in parts
            if module in lora.modules
            for a, b in [lora.modules[module]]
        }
        if len(shapes) != 1:
            raise InvalidAdapter(f"components disagree on the shape of {module!r}: {sorted(shapes)}")
        ((in_f, out_f),) = shapes
        a_rows, b_cols = [], []
        for lora, weight in parts:
            if module in lora.modules:
                a, b = lora.modules[module]
                scale = weight * lora.scale
                a_rows.append(a.to(torch.float32) * scale)  # [r_i, in]
                b_cols.append(b.to(torch.float32))  # [out, r_i]
            else:  # absent module: zero contribution, keeps rank R everywhere
                a_rows.append(torch.zeros(lora.rank, in_f))
                b_cols.append(torch.zeros(out_f, lora.rank))
        out[f"{module}.lora_A.weight"] = torch.cat(a_rows, dim=0).contiguous()  # [R, in]
        out[f"{module}.lora_B.weight"] = torch.cat(b_cols, dim=1).contiguous()  # [out, R]
    return out, total


def write_peft_dir(state: dict[str, Any], rank: int, target_modules: Iterable[str], out_dir: Path) -> None:
    """Write a composed state dict as a PEFT LoRA directory with r = lora_alpha = ``rank`` (scale 1)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "use_rslora": False,
        "inference_mode": True,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2))


def compose_to_dir(components: Sequence[Component], out_dir: Path) -> int:
    """Compose PEFT adapters into ``out_dir`` (PEFT layout); returns the composite rank."""
    loras = [(load_lora(c.path), c.weight) for c in components]
    state, rank = compose_tensors(loras)
    write_peft_dir(state, rank, {t for lora, _ in loras for t in lora.target_modules}, out_dir)
    return rank
