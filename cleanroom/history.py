"""Per-tenant memory of what was released: difference checks and identical-query answers.

A released cell is remembered by the set of shoppers behind it (kept server side, never output). A new
cell whose population differs from an earlier released one by at least one but fewer than ``k`` shoppers
would let the tenant subtract the two answers and learn about those few people (complement and
near-duplicate-filter attacks), so the query is refused. The identical query gets the identical stored
answer (no re-computation, and under DP no fresh noise to average away).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any


class ReleaseHistory:
    """In-memory history per tenant (persisted by the caller if needed)."""

    def __init__(self) -> None:
        self._populations: dict[str, list[frozenset[str]]] = defaultdict(list)
        self._answers: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def cached(self, tenant: str, query_key: str) -> Any | None:
        """The stored answer to the identical query, if any."""
        with self._lock:
            return self._answers.get((tenant, query_key))

    def conflict(self, tenant: str, populations: list[frozenset[str]], k: int) -> int | None:
        """Size of the smallest difference (0 < d < k) with an earlier release, or None when safe."""
        with self._lock:
            history = self._populations[tenant]
            worst: int | None = None
            for new in populations:
                for old in history:
                    d = len(new ^ old)
                    if 0 < d < k and (worst is None or d < worst):
                        worst = d
            return worst

    def remember(self, tenant: str, query_key: str, populations: list[frozenset[str]], answer: Any) -> None:
        """Record a release."""
        with self._lock:
            known = set(self._populations[tenant])
            self._populations[tenant].extend(p for p in populations if p not in known)
            self._answers[(tenant, query_key)] = answer
