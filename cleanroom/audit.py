"""Append-only, crash-safe audit log of clean-room queries (accepted and refused): one JSON line each,
written and fsync'ed before the answer leaves."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class QueryAudit:
    """JSON-lines audit file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, **fields: Any) -> None:
        """Append one record (``ts`` added) durably."""
        line = json.dumps({"ts": round(time.time(), 3), **fields}, sort_keys=True, default=str) + "\n"
        with self._lock, open(self.path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def entries(self) -> list[dict[str, Any]]:
        """All records, oldest first (a torn last line from a crash is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out
