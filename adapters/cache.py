"""A node-local, size-bounded, content-addressed cache of composite adapters.

Contract: :meth:`CompositeCache.get_or_build` returns the directory of the composite for a resolved
stack, building it at most once per node even under concurrent callers and evicting least-recently-used
composites beyond ``max_bytes`` (:class:`adapters.nodecache.NodeCache` gives the locking, atomic
publication and eviction); only the last 256 build times are kept. A stack whose total rank exceeds
``max_rank`` is refused, unless ``compress`` is set: then the summed delta of each module is truncated by
SVD to ``max_rank`` and the measured relative error is recorded in the entry's ``composite.json``. With
``dtype`` (the engine's, e.g. ``bfloat16``) the composite's tensors are written in it — composed in float32, then
cast as vLLM would cast them on load (``Tensor.to``, round to nearest even; the composite's scale is 1, so vLLM
multiplies nothing after the cast): the bits vLLM ends up with are the same and the files are half the size. Such
entries live under ``<composite id>-<dtype>`` (the composite id itself, which routing uses, is unchanged).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.compose import compose_tensors, load_lora, write_peft_dir
from adapters.errors import InvalidAdapter
from adapters.manifest import LAYER_ORDER, AdapterManifest
from adapters.nodecache import NodeCache
from adapters.registry import AdapterRegistry
from adapters.stack import METHOD, StackPart, composite_id, stack_text

INFO = "composite.json"


@dataclass
class CacheStats:
    """Counters since the cache object was created."""

    hits: int = 0
    misses: int = 0
    build_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=256))  # the latest builds


@dataclass(frozen=True)
class ResolvedStack:
    """A stack with versions pinned, its composite id and total rank."""

    parts: tuple[StackPart, ...]
    composite_id: str
    base_revision: str
    rank: int
    manifests: tuple[AdapterManifest, ...] = ()

    @property
    def text(self) -> str:
        """Canonical text (``id@v[*w]+...``)."""
        return stack_text(self.parts)


def resolve(registry: AdapterRegistry, parts: tuple[StackPart, ...], live_only: bool = True) -> ResolvedStack:
    """Pin versions (latest live when absent), put the parts in canonical order and compute the composite id;
    raises AdapterError. A stack is a sum, so ``a+b`` and ``b+a`` are one stack: parts are ordered by hierarchy
    layer (industry, retailer, manufacturer, task), then id, version and weight, and get one composite id, one
    cache entry and one engine slot. ``live_only`` False accepts retired versions asked by number (an engine
    replica loading a stack that the router pinned: which versions new requests may use is decided there)."""
    manifests = [
        registry.get(p.id, p.version)
        if live_only or p.version is None
        else registry.manifest(p.id, p.version)
        for p in parts
    ]
    order = sorted(
        range(len(parts)),
        key=lambda i: (
            LAYER_ORDER.index(manifests[i].kind),
            parts[i].id,
            manifests[i].version,
            parts[i].weight,
        ),
    )
    parts, manifests = tuple(parts[i] for i in order), [manifests[i] for i in order]
    revisions = {m.base_model_revision for m in manifests}
    if len(revisions) != 1:
        raise InvalidAdapter(
            f"components were trained on different base model revisions: {sorted(revisions)}"
        )
    pinned = tuple(StackPart(p.id, m.version, p.weight) for p, m in zip(parts, manifests, strict=True))
    (revision,) = revisions
    cid = composite_id(revision, [(m.sha256, p.weight) for p, m in zip(parts, manifests, strict=True)])
    return ResolvedStack(pinned, cid, revision, sum(m.rank for m in manifests), tuple(manifests))


def check_rank(stack: ResolvedStack, max_rank: int, compress: bool) -> None:
    """Raise InvalidAdapter when the stack's total rank exceeds ``max_rank`` and compression is off."""
    if stack.rank > max_rank and not compress:
        raise InvalidAdapter(
            f"stack {stack.text} has total rank {stack.rank}, above max_lora_rank {max_rank}; "
            "use fewer or smaller adapters, raise max_lora_rank, or enable adapters.compress_overflow"
        )


def _svd_truncate(state: dict[str, Any], rank: int) -> tuple[dict[str, Any], float]:
    """Per module: best rank-``rank`` approximation of B@A; returns (state, max relative error)."""
    import torch

    out: dict[str, Any] = {}
    worst = 0.0
    for key in [k for k in state if k.endswith(".lora_A.weight")]:
        module = key[: -len(".lora_A.weight")]
        a, b = state[key], state[f"{module}.lora_B.weight"]
        delta = b @ a  # [out, in]
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(rank, s.shape[0])
        b_new = torch.zeros(b.shape[0], rank)
        a_new = torch.zeros(rank, a.shape[1])
        b_new[:, :k] = u[:, :k] * s[:k]
        a_new[:k] = vh[:k]
        norm = float(torch.linalg.norm(delta))
        err = float(torch.linalg.norm(delta - b_new @ a_new)) / norm if norm > 0 else 0.0
        worst = max(worst, err)
        out[key], out[f"{module}.lora_B.weight"] = a_new.contiguous(), b_new.contiguous()
    return out, worst


class CompositeCache:
    """Composite adapters under ``root/<composite id>/`` (PEFT layout + ``composite.json``)."""

    def __init__(
        self,
        root: Path | str,
        registry: AdapterRegistry,
        max_bytes: int = 2 << 30,
        max_rank: int = 64,
        compress: bool = False,
        on_event: Callable[[str, float], None] | None = None,
        dtype: str | None = None,
    ) -> None:
        if dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"dtype must be bfloat16, float16 or None (float32), not {dtype!r}")
        self.dtype = dtype
        self._store = NodeCache(root, max_bytes, marker=INFO)
        self.root = self._store.root
        self.registry = registry
        self.max_rank = max_rank
        self.compress = compress
        self.stats = CacheStats()
        self._on_event = on_event  # ("hit", 0.0) or ("build", seconds), e.g. for metrics

    @property
    def lock_count(self) -> int:
        """Per-composite locks alive now (held or waited on)."""
        return self._store.lock_count

    @property
    def max_bytes(self) -> int:
        """The cache's size bound (LRU beyond it)."""
        return self._store.max_bytes

    def _key(self, cid: str) -> str:
        return cid if self.dtype is None else f"{cid}-{self.dtype}"

    def path(self, cid: str) -> Path:
        """Where composite ``cid`` lives (it may not exist yet)."""
        return self._store.path(self._key(cid))

    def get_or_build(self, stack: ResolvedStack) -> Path:
        """The composite's directory, built now if absent (see the module contract)."""
        key = self._key(stack.composite_id)
        if not self._store.has(key):
            check_rank(stack, self.max_rank, self.compress)
        started = time.perf_counter()
        dest, built = self._store.get_or_make(key, lambda tmp: self._build(stack, tmp))
        if built:
            seconds = time.perf_counter() - started
            self.stats.misses += 1
            self.stats.build_seconds.append(seconds)
            if self._on_event is not None:
                self._on_event("build", seconds)
        else:
            self.stats.hits += 1
            if self._on_event is not None:
                self._on_event("hit", 0.0)
        return dest

    def _build(self, stack: ResolvedStack, out: Path) -> None:
        loras = [(load_lora(self.registry.files(p.id, str(p.version))), p.weight) for p in stack.parts]
        state, rank = compose_tensors(loras)
        rel_error = 0.0
        method = METHOD
        if rank > self.max_rank:
            state, rel_error = _svd_truncate(state, self.max_rank)
            rank, method = self.max_rank, f"{METHOD}+svd{self.max_rank}"
        if self.dtype is not None:  # as vLLM casts on load (scale 1: nothing is multiplied after the cast)
            import torch

            state = {k: v.to(getattr(torch, self.dtype)) for k, v in state.items()}
        write_peft_dir(state, rank, {t for lora, _ in loras for t in lora.target_modules}, out)
        info = {
            "composite_id": stack.composite_id,
            "stack": stack.text,
            "base_revision": stack.base_revision,
            "rank": rank,
            "method": method,
            "relative_error": rel_error,
            "dtype": self.dtype or "float32",
            "built_at": time.time(),
        }
        (out / INFO).write_text(json.dumps(info, indent=2))

    def info(self, cid: str) -> dict[str, Any]:
        """The ``composite.json`` of a built composite."""
        return dict(json.loads((self.path(cid) / INFO).read_text()))

    def gc(self, keep: set[str] | None = None) -> int:
        """Drop interrupted builds, then LRU composites beyond ``max_bytes``; returns removals."""
        return self._store.gc({self._key(c) for c in keep} if keep else None)
