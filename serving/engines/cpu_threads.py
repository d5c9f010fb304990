"""CPU cores for an engine replica: several vLLM CPU engines on one node must not all bind every core.

Contract of :func:`claim_cores`: returns ``n`` core ids from this process's affinity set, preferring cores no
other live process on the node has claimed (a claim is an ``flock`` on ``<dir>/core-<id>.lock``, held until the
process exits, so a dead replica's cores are free again at once); when fewer than ``n`` are free, the rest are
the least-claimed ones (sharing beats failing). The caller keeps the returned handles open.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO


def claim_cores(n: int, directory: Path) -> tuple[list[int], list[IO[str]]]:
    """``n`` cores for this process (see the module contract): (core ids, open lock files to keep)."""
    cores = sorted(os.sched_getaffinity(0))
    n = max(1, min(n, len(cores)))
    directory.mkdir(parents=True, exist_ok=True)
    mine: list[int] = []
    handles: list[IO[str]] = []
    for core in cores:
        if len(mine) == n:
            break
        fh = open(directory / f"core-{core}.lock", "a")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        mine.append(core)
        handles.append(fh)
    for core in cores:  # not enough free cores: share the remaining ones (highest ids first)
        if len(mine) == n:
            break
        if core not in mine:
            mine.append(core)
    return sorted(mine), handles


def release(handles: list[IO[str]]) -> None:
    """Give the claimed cores back (process exit does it too)."""
    for fh in handles:
        with contextlib.suppress(OSError):
            fh.close()
