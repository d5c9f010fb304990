"""A node-local, size-bounded directory cache shared by every process on the node.

Contract: :meth:`NodeCache.get_or_make` returns ``root/<key>/``, making it at most once per node even
under concurrent callers (a thread lock plus an ``flock`` across processes). An entry is made in a
``.tmp-<pid>-*`` directory and published by one atomic rename, so a reader never sees half an entry and
a crash leaves only a temp directory that :meth:`gc` removes once its process is gone. Entries beyond
``max_bytes`` are evicted least-recently-used (a hit refreshes the entry's mtime); eviction is
serialised across processes by a cache-wide ``flock``. Per-key locks live only while held or waited
on and their lock files are removed after use, so memory and disk stay bounded for any number of keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class NodeCache:
    """Entries ``root/<key>/``, complete when ``root/<key>/<marker>`` exists."""

    def __init__(self, root: Path | str, max_bytes: int, marker: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.marker = marker
        self._locks: dict[str, list[Any]] = {}  # key -> [lock, users]; gone when nobody holds or waits
        self._locks_guard = threading.Lock()

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        with self._locks_guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                (self.root / ".locks").mkdir(exist_ok=True)
                path = self.root / ".locks" / f"{key}.lock"
                with open(path, "w") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        # another process may hold the same path's older inode; the caller re-checks the
                        # published entry under the lock, so removing the path never allows a double make
                        with contextlib.suppress(OSError):
                            path.unlink()
                        fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            with self._locks_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)

    @property
    def lock_count(self) -> int:
        """Per-key locks alive now (held or waited on)."""
        with self._locks_guard:
            return len(self._locks)

    def path(self, key: str) -> Path:
        """Where entry ``key`` lives (it may not exist yet)."""
        return self.root / key

    def has(self, key: str) -> bool:
        """Whether entry ``key`` is complete on this node."""
        return (self.path(key) / self.marker).is_file()

    def get_or_make(self, key: str, make: Callable[[Path], None]) -> tuple[Path, bool]:
        """``(entry directory, made now)``; ``make(tmp_dir)`` fills a fresh directory when the entry is
        absent (its exceptions propagate and leave nothing behind)."""
        dest = self.path(key)
        if self.has(key):
            with contextlib.suppress(OSError):
                os.utime(dest)
            return dest, False
        with self._lock(key):
            if self.has(key):  # made by a concurrent caller while we waited
                return dest, False
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.root))
            try:
                make(tmp)
                try:
                    os.rename(tmp, dest)
                except OSError:
                    if not self.has(key):
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)  # a racing maker published it first
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self.gc(keep={key})
        return dest, True

    def gc(self, keep: set[str] | None = None) -> int:
        """Drop interrupted makes (their process is gone), then LRU entries until the cache fits
        ``max_bytes``; returns removals. Makes in progress (a live process's) are left alone."""
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
            if _maker_alive(tmp.name):
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
        entries = []
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith(".") and (d / self.marker).is_file():
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


def _maker_alive(name: str) -> bool:
    """True when the ``.tmp-<pid>-…`` directory belongs to a process still running on this node."""
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
