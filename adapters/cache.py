"""A node-local, size-bounded, content-addressed cache of composite adapters.

Contract: :meth:`CompositeCache.get_or_build` returns the directory of the composite for a resolved
stack, building it at most once per node even under concurrent callers (a thread lock plus an
``flock`` across processes), publishing by atomic rename (a crash mid-build leaves only a
``.tmp-*`` directory that :meth:`gc` removes) and evicting least-recently-used entries beyond
``max_bytes`` (eviction is serialised across processes by a cache-wide ``flock``). Memory and disk
stay bounded for any number of composites: per-composite locks live only while someone waits on them,
lock files are removed after use, and only the last 256 build times are kept. A stack whose total rank exceeds ``max_rank`` is refused, unless ``compress`` is set:
then the summed delta of each module is truncated by SVD to ``max_rank`` and the measured relative
error is recorded in the entry's ``composite.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.compose import compose_tensors, load_lora, write_peft_dir
from adapters.errors import InvalidAdapter
from adapters.manifest import AdapterManifest
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


def resolve(registry: AdapterRegistry, parts: tuple[StackPart, ...]) -> ResolvedStack:
    """Pin versions (latest when absent) and compute the composite id; raises AdapterError."""
    manifests = [registry.get(p.id, p.version) for p in parts]
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
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.max_bytes = max_bytes
        self.max_rank = max_rank
        self.compress = compress
        self.stats = CacheStats()
        self._on_event = on_event  # ("hit", 0.0) or ("build", seconds), e.g. for metrics
        self._locks: dict[str, list[Any]] = {}  # cid -> [lock, users]; gone when nobody holds or waits
        self._locks_guard = threading.Lock()

    @contextlib.contextmanager
    def _lock(self, cid: str) -> Iterator[None]:
        with self._locks_guard:
            entry = self._locks.setdefault(cid, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                (self.root / ".locks").mkdir(exist_ok=True)
                path = self.root / ".locks" / f"{cid}.lock"
                with open(path, "w") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        # another process may hold the same path's older inode; the caller re-checks the
                        # published entry under the lock, so removing the path never allows a double build
                        with contextlib.suppress(OSError):
                            path.unlink()
                        fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            with self._locks_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(cid, None)

    @property
    def lock_count(self) -> int:
        """Per-composite locks alive now (held or waited on)."""
        with self._locks_guard:
            return len(self._locks)

    def _hit(self) -> None:
        self.stats.hits += 1
        if self._on_event is not None:
            self._on_event("hit", 0.0)

    def path(self, cid: str) -> Path:
        """Where composite ``cid`` lives (it may not exist yet)."""
        return self.root / cid

    def get_or_build(self, stack: ResolvedStack) -> Path:
        """The composite's directory, built now if absent (see the module contract)."""
        dest = self.path(stack.composite_id)
        if (dest / INFO).is_file():
            os.utime(dest)
            self._hit()
            return dest
        check_rank(stack, self.max_rank, self.compress)
        with self._lock(stack.composite_id):
            if (dest / INFO).is_file():  # built by a concurrent caller while we waited
                self._hit()
                return dest
            started = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.root))
            try:
                self._build(stack, tmp)
                try:
                    os.rename(tmp, dest)
                except OSError:
                    if not (dest / INFO).is_file():
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)  # a racing builder published it first
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            seconds = time.perf_counter() - started
            self.stats.misses += 1
            self.stats.build_seconds.append(seconds)
            if self._on_event is not None:
                self._on_event("build", seconds)
        self.gc(keep={stack.composite_id})
        return dest

    def _build(self, stack: ResolvedStack, out: Path) -> None:
        loras = [(load_lora(self.registry.path(p.id, p.version)), p.weight) for p in stack.parts]
        state, rank = compose_tensors(loras)
        rel_error = 0.0
        method = METHOD
        if rank > self.max_rank:
            state, rel_error = _svd_truncate(state, self.max_rank)
            rank, method = self.max_rank, f"{METHOD}+svd{self.max_rank}"
        write_peft_dir(state, rank, {t for lora, _ in loras for t in lora.target_modules}, out)
        info = {
            "composite_id": stack.composite_id,
            "stack": stack.text,
            "base_revision": stack.base_revision,
            "rank": rank,
            "method": method,
            "relative_error": rel_error,
            "built_at": time.time(),
        }
        (out / INFO).write_text(json.dumps(info, indent=2))

    def info(self, cid: str) -> dict[str, Any]:
        """The ``composite.json`` of a built composite."""
        return dict(json.loads((self.path(cid) / INFO).read_text()))

    def gc(self, keep: set[str] | None = None) -> int:
        """Drop interrupted builds (their process is gone), then LRU entries until the cache fits
        ``max_bytes``; returns removals. Builds in progress (a live process's) are left alone."""
        keep = keep or set()
        with open(self.root / ".gc.lock", "w") as fh:  # one eviction pass at a time on this node
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                return self._gc(keep)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _gc(self, keep: set[str]) -> int:
        removed = 0
        for tmp in self.root.glob(".tmp-*"):
            if _builder_alive(tmp.name):
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
        entries = []
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith(".") and (d / INFO).is_file():
                size = sum(f.stat().st_size for f in d.iterdir())
                entries.append((d.stat().st_mtime, size, d))
        total = sum(e[1] for e in entries)
        for _, size, d in sorted(entries):
            if total <= self.max_bytes:
                break
            if d.name in keep:
                continue
            shutil.rmtree(d, ignore_errors=True)
            total -= size
            removed += 1
        return removed


def _builder_alive(name: str) -> bool:
    """True when the ``.tmp-<pid>-…`` build directory belongs to a process still running on this node."""
    try:
        pid = int(name.split("-")[1])
    except (IndexError, ValueError):
        return False  # an old-style name: no owner to wait for
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
