"""Checks of a PEFT adapter against the base model it claims to fit (Llama-family layouts).

Contract: :func:`check_against_base` raises :class:`InvalidAdapter` naming the first mismatch — an
unknown target module, a layer index the model lacks, or a lora_A/lora_B shape that does not fit the
module — and returns None when every tensor fits. :func:`base_revision` is the content hash adapters
record as ``base_model_revision``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adapters.errors import InvalidAdapter

_KEY_RE = re.compile(
    r"layers\.(?P<layer>\d+)\.(self_attn|mlp)\.(?P<module>[a-z_]+)\.lora_(?P<ab>[AB])\.weight$"
)


def module_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-targetable linear module of a Llama-family config."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv * head_dim),
        "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def base_revision(model_dir: Path) -> str:
    """sha256 of the base weights (recorded by ``rmn model prepare``, else computed)."""
    from adapters.hashing import sha256_file

    marker = model_dir / "rmn-model.json"
    if marker.is_file():
        return str(json.loads(marker.read_text())["sha256"])
    return sha256_file(model_dir / "model.safetensors")


def check_against_base(adapter_dir: Path, model_dir: Path) -> None:
    """Raise InvalidAdapter unless every LoRA tensor of ``adapter_dir`` fits the model in ``model_dir``."""
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    shapes = module_shapes(config)
    layers = int(config["num_hidden_layers"])
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    unknown = sorted(set(cfg.get("target_modules") or []) - set(shapes))
    if unknown:
        raise InvalidAdapter(f"unknown target modules {unknown}; this base model has {sorted(shapes)}")
    rank = int(cfg["r"])
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            m = _KEY_RE.search(key)
            if m is None:
                raise InvalidAdapter(f"tensor {key!r} does not name a LoRA weight of a decoder layer")
            module, layer = m.group("module"), int(m.group("layer"))
            if module not in shapes:
                raise InvalidAdapter(f"tensor {key!r}: unknown module {module!r}")
            if layer >= layers:
                raise InvalidAdapter(f"tensor {key!r}: layer {layer} but the base model has {layers} layers")
            in_f, out_f = shapes[module]
            want = (rank, in_f) if m.group("ab") == "A" else (out_f, rank)
            got = tuple(f.get_slice(key).get_shape())
            if got != want:
                raise InvalidAdapter(
                    f"tensor {key!r} has shape {list(got)}, the base model needs {list(want)}"
                )
