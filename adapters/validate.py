"""Checks of a PEFT adapter against the base model it claims to fit, for any decoder architecture.

Contract: :func:`check_against_base` raises :class:`InvalidAdapter` naming the first mismatch — a target
module the model lacks, a layer index the model lacks, or a lora_A/lora_B shape that does not fit the
module — and returns None when every tensor fits. Module names and shapes are the model's own, read from
its weight headers (:mod:`adapters.basemodel`), so single-file and sharded checkpoints of Llama, Qwen2,
Mistral, Gemma and fused (Phi-3-style) layouts are checked alike. :func:`base_revision` is the content hash
adapters record as ``base_model_revision``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adapters.basemodel import LAYER_RE, base_revision, layout, read_header
from adapters.errors import InvalidAdapter

__all__ = ["base_revision", "check_against_base"]

_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def check_against_base(adapter_dir: Path, model_dir: Path) -> None:
    """Raise InvalidAdapter unless every LoRA tensor of ``adapter_dir`` fits the model in ``model_dir``."""
    base = layout(Path(model_dir))
    targetable = base.targetable
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    unknown = sorted(set(cfg.get("target_modules") or []) - set(targetable))
    if unknown:
        raise InvalidAdapter(
            f"unknown target modules {unknown}; this base model ({base.architecture}) has {targetable}"
        )
    rank = int(cfg["r"])
    for key, info in read_header(adapter_dir / "adapter_model.safetensors").items():
        m = _KEY_RE.match(key)
        layer = LAYER_RE.search(key)
        if m is None or layer is None:
            raise InvalidAdapter(f"tensor {key!r} does not name a LoRA weight of a decoder layer")
        module = m.group("module")
        if int(layer.group("layer")) >= base.num_layers:
            raise InvalidAdapter(
                f"tensor {key!r}: layer {layer.group('layer')} but the base model has {base.num_layers} layers"
            )
        if module not in base.modules:
            leaf = module.rsplit(".", 1)[-1]
            raise InvalidAdapter(
                f"tensor {key!r}: the base model ({base.architecture}) has no module {module!r}"
                + (f" ({leaf!r} is not one of {targetable})" if leaf not in targetable else "")
            )
        in_f, out_f = base.modules[module]
        want = (rank, in_f) if m.group("ab") == "A" else (out_f, rank)
        got = tuple(int(d) for d in info.get("shape", ()))
        if got != want:
            raise InvalidAdapter(f"tensor {key!r} has shape {list(got)}, the base model needs {list(want)}")
