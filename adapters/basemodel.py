"""A base model as a Hugging Face directory, single-file or sharded: its linear modules and its revision.

Contract:
- :func:`layout` reads ``config.json`` and the safetensors *headers* (``model.safetensors``, or the shards
  that ``model.safetensors.index.json`` names) — never the tensor data — and returns every 2-D weight of a
  decoder layer as ``module path -> (in_features, out_features)``. The names and shapes are the model's own,
  so any architecture whose checkpoint names its layers ``...layers.<i>...`` fits: Llama, Qwen2, Mistral,
  Gemma, and fused layouts such as Phi-3's ``qkv_proj``/``gate_up_proj``.
- :func:`base_revision` is the content hash adapters record as ``base_model_revision``: the one declared in
  ``rmn-model.json`` (written by :func:`register_model`, i.e. ``rmn model register``, or by
  ``rmn model prepare``), else computed once per process and file state (sha256 of ``model.safetensors``;
  for a sharded model, sha256 over the index's and every shard's sha256). Registering a model is what keeps
  uploads from re-hashing gigabytes of shards.
"""

from __future__ import annotations

import json
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import adapters.hashing as hashing
from adapters.errors import InvalidAdapter

MARKER = "rmn-model.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
LAYER_RE = re.compile(r"(^|\.)layers\.(?P<layer>\d+)\.")  # a decoder layer's index in a tensor name
_MAX_HEADER = 100 << 20  # safetensors' own bound on a header


@dataclass(frozen=True)
class ModelLayout:
    """What adapters are checked against: layer count and each layer's linear modules."""

    architecture: str
    num_layers: int
    modules: dict[str, tuple[int, int]]  # "model.layers.0.self_attn.q_proj" -> (in_features, out_features)
    weight_files: tuple[str, ...]  # relative to the model directory

    @property
    def targetable(self) -> list[str]:
        """Leaf names a LoRA may target (``q_proj``, ``qkv_proj``, ...), sorted."""
        return sorted({path.rsplit(".", 1)[-1] for path in self.modules})


def weight_files(model_dir: Path) -> list[str]:
    """The safetensors files holding the weights: the single file, or the index's shards (sorted)."""
    index = model_dir / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidAdapter(f"{index}: not a safetensors index ({e})") from e
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise InvalidAdapter(f"{model_dir}: shards named by {INDEX} are missing: {missing}")
        return shards
    if (model_dir / SINGLE).is_file():
        return [SINGLE]
    raise InvalidAdapter(
        f"{model_dir} is not a Hugging Face model directory with safetensors weights "
        f"({SINGLE} or {INDEX} + shards)"
    )


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes); reads only the header."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise InvalidAdapter(f"{path}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise InvalidAdapter(f"{path}: not a safetensors file (header of {size} bytes)")
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidAdapter(f"{path}: not a safetensors file ({e})") from e
    header.pop("__metadata__", None)
    return dict(header)


def _signature(model_dir: Path, files: list[str]) -> tuple[Any, ...]:
    stats = [(model_dir / f).stat() for f in [*files, INDEX] if (model_dir / f).is_file()]
    return (str(model_dir.resolve()), *((s.st_size, s.st_mtime_ns) for s in stats))


_lock = threading.Lock()
_layouts: dict[tuple[Any, ...], ModelLayout] = {}
_revisions: dict[tuple[Any, ...], str] = {}


def layout(model_dir: Path) -> ModelLayout:
    """The model's layout from its config and weight headers (cached per file state)."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError as e:
        raise InvalidAdapter(f"{model_dir} has no config.json: not a Hugging Face model directory") from e
    files = weight_files(model_dir)
    key = _signature(model_dir, files)
    with _lock:
        if key in _layouts:
            return _layouts[key]
    modules: dict[str, tuple[int, int]] = {}
    layers: set[int] = set()
    for name in files:
        for tensor, info in read_header(model_dir / name).items():
            m = LAYER_RE.search(tensor)
            if m is None or not tensor.endswith(".weight") or len(info.get("shape", ())) != 2:
                continue
            out_f, in_f = info["shape"]
            modules[tensor[: -len(".weight")]] = (int(in_f), int(out_f))
            layers.add(int(m.group("layer")))
    declared = config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers")
    result = ModelLayout(
        architecture=str((config.get("architectures") or ["unknown"])[0]),
        num_layers=int(declared or (max(layers) + 1 if layers else 0)),
        modules=modules,
        weight_files=tuple(files),
    )
    with _lock:
        _layouts[key] = result
    return result


def declared_revision(model_dir: Path) -> str | None:
    """The revision recorded in ``rmn-model.json`` (``revision``, or ``sha256`` as ``rmn model prepare``
    writes it), or None."""
    marker = Path(model_dir) / MARKER
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    value = info.get("revision") or info.get("sha256")
    return str(value) if value else None


def file_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of every weight file and of the index (when sharded): reads every byte."""
    files = weight_files(model_dir)
    names = [*files, INDEX] if (model_dir / INDEX).is_file() else files
    return {name: hashing.sha256_file(model_dir / name) for name in names}


def revision_of(hashes: dict[str, str]) -> str:
    """The revision from the file hashes: the single file's own sha256, else sha256 over ``name:sha`` lines."""
    if list(hashes) == [SINGLE]:
        return hashes[SINGLE]
    import hashlib

    lines = "".join(f"{name}:{digest}\n" for name, digest in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def base_revision(model_dir: Path) -> str:
    """The declared revision, else the computed one (once per process and file state)."""
    model_dir = Path(model_dir)
    if (declared := declared_revision(model_dir)) is not None:
        return declared
    key = _signature(model_dir, weight_files(model_dir))
    with _lock:
        if key in _revisions:
            return _revisions[key]
    value = revision_of(file_hashes(model_dir))
    with _lock:
        _revisions[key] = value
    return value


def register_model(model_dir: Path, revision: str | None = None) -> dict[str, Any]:
    """Check a model directory, record its revision and layout in ``rmn-model.json``; returns the record.

    ``revision``: a declared one (e.g. a Hugging Face commit) instead of hashing every weight file."""
    model_dir = Path(model_dir)
    found = layout(model_dir)
    if not found.modules:
        raise InvalidAdapter(
            f"{model_dir}: no 2-D weights under '...layers.<i>.' in {list(found.weight_files)}: "
            "not a decoder model rmn-lora can put adapters on"
        )
    marker = model_dir / MARKER
    record: dict[str, Any] = json.loads(marker.read_text()) if marker.is_file() else {}
    if revision is None:
        hashes = file_hashes(model_dir)
        record["files"] = hashes
        revision = revision_of(hashes)
        if list(hashes) == [SINGLE]:
            record["sha256"] = revision  # what `rmn model prepare` checks the weights against
    record.update(
        revision=revision,
        architecture=found.architecture,
        num_layers=found.num_layers,
        target_modules=found.targetable,
        weight_files=list(found.weight_files),
        registered=time.time(),
    )
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return record
