"""Append-only, crash-safe audit log of clean-room queries (accepted and refused): one JSON line each,
written and fsync'ed before the answer leaves."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


def append_durably(path: Path, line: str, fsync: bool = True) -> None:
    """Append one line (and fsync unless ``fsync=False``); a torn last line left by a crash is closed first,
    so it stays the only casualty instead of swallowing this record."""
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(line.encode() + b"\n")
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a file written by :func:`append_durably`, oldest first; none when it does not exist.
    A torn line (a crash mid-append) is skipped: the answer it belonged to never left."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class QueryAudit:
    """JSON-lines audit file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, **fields: Any) -> None:
        """Append one record (``ts`` added) durably."""
        line = json.dumps({"ts": round(time.time(), 3), **fields}, sort_keys=True, default=str)
        with self._lock:
            append_durably(self.path, line)

    def entries(self) -> list[dict[str, Any]]:
        """All records, oldest first (a torn last line from a crash is skipped)."""
        return read_json_lines(self.path)
