"""Per-tenant memory of what was released: difference checks and identical-query answers.

A released cell is remembered by the set of shoppers behind it (kept server side, never output; stored
as 64-bit keyed hashes of the ids). A new cell whose population differs from an earlier released one by
at least one but fewer than ``k`` shoppers would let the tenant subtract the two answers and learn about
those few people (complement and near-duplicate-filter attacks), so the query is refused. The identical
query gets the identical stored answer (no re-computation, and under DP no fresh noise to average away).
With a path, every release is appended (fsync'ed) and reloaded on restart.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from cleanroom.audit import append_durably

Population = frozenset[int]


def population(ids: list[str]) -> Population:
    """The stored form of a set of shopper ids (8-byte blake2b of each)."""
    return frozenset(int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") for i in ids)


class ReleaseHistory:
    """Releases per tenant, optionally persisted as JSON lines."""

    def __init__(self, path: Path | None = None) -> None:
        self._populations: dict[str, list[Population]] = defaultdict(list)
        self._answers: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.path = path
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # torn last line after a crash: that release never left
                    continue
                self._add(
                    rec["tenant"], rec["key"], [frozenset(p) for p in rec["populations"]], rec["answer"]
                )

    def cached(self, tenant: str, query_key: str) -> Any | None:
        """The stored answer to the identical query, if any."""
        with self._lock:
            return self._answers.get((tenant, query_key))

    def conflict(self, tenant: str, populations: list[Population], k: int) -> int | None:
        """Size of the smallest difference (0 < d < k) with an earlier release, or None when safe."""
        with self._lock:
            worst: int | None = None
            for new in populations:
                for old in self._populations[tenant]:
                    d = len(new ^ old)
                    if 0 < d < k and (worst is None or d < worst):
                        worst = d
            return worst

    def remember(self, tenant: str, query_key: str, populations: list[Population], answer: Any) -> None:
        """Record a release (durably, with a path) before it is returned."""
        with self._lock:
            if self.path is not None:
                rec = {
                    "tenant": tenant,
                    "key": query_key,
                    "populations": [sorted(p) for p in populations],
                    "answer": answer,
                }
                append_durably(self.path, json.dumps(rec, default=str))
            self._add(tenant, query_key, populations, answer)

    def _add(self, tenant: str, key: str, populations: list[Population], answer: Any) -> None:
        known = set(self._populations[tenant])
        self._populations[tenant].extend(p for p in populations if p not in known)
        self._answers[(tenant, key)] = answer
