"""Append-only audit log of composition decisions: one JSON object per line.

Each record is also emitted on the ``ray.serve.rmn.audit`` logger (a child of Serve's, so a replica's JSON log file holds it with the request id);
with a path, lines are appended (a torn last line from a crash is closed first) and flushed before the
request proceeds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from cleanroom.audit import append_durably

log = logging.getLogger("ray.serve.rmn.audit")


class AuditLog:
    """Writes decision records; thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, **fields: Any) -> dict[str, Any]:
        """Append one record (``ts`` added) and return it."""
        entry = {"ts": round(time.time(), 3), **fields}
        line = json.dumps(entry, sort_keys=True, default=str)
        log.info(line)
        if self.path is not None:
            with self._lock:  # flushed, not fsync'ed: this is on every request's path
                append_durably(self.path, line, fsync=False)
        return entry
