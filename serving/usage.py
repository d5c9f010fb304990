"""Adapter usage counts across the cluster (``usage`` in ``GET /v1/adapters[/{id}]``).

Each router replica counts the requests it answered 200 per adapter version (every component of a
stack counts once) and, off the request path, adds them every ``flush_s`` seconds to one named,
detached actor per registry (:class:`UsageBoard`, ``rmn-adapter-usage-<key>`` in namespace ``rmn``). A replica's reading
is the board plus its own counts not yet flushed, so a replica sees its own requests at once and the
others' within ``flush_s``. The board writes its counts beside the registry (:mod:`serving.records`,
``usage.json``) after each flush it receives (one small write per router every ``flush_s`` while there is
traffic) and reads them back when it is created, so a new cluster (or a recreated board) goes on counting from
there; a flush that fails keeps its counts for the next one. Apps that share a registry share its board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from serving.records import Records, RecordsUnavailable, detached_board

BOARD_NAME = "rmn-adapter-usage"
USAGE_DOC = "usage.json"
log = logging.getLogger("ray.serve")


class UsageBoard:
    """``"id@version" -> (requests, last_used)`` (Ray actor); ``records``: where the counts persist."""

    def __init__(self, records: Records | None = None) -> None:
        self._records = records
        self._counts: dict[str, tuple[int, float]] = {}
        if records is not None:
            try:
                saved = records.read(USAGE_DOC) or {}
            except RecordsUnavailable as e:
                log.warning("adapter usage not restored: %s", e)
                saved = {}
            self._counts = {k: (int(n), float(t)) for k, (n, t) in saved.items()}

    def add(self, counts: dict[str, tuple[int, float]]) -> None:
        for key, (n, last) in counts.items():
            _add(self._counts, key, n, last)
        self.persist()

    def persist(self) -> None:
        """Write the counts beside the registry now (a failure is logged; the next add retries)."""
        if self._records is None:
            return
        try:
            self._records.write(USAGE_DOC, self._counts)
        except RecordsUnavailable as e:
            log.warning("adapter usage not persisted (retried on the next flush): %s", e)

    def get(self, adapter_ids: list[str]) -> dict[str, tuple[int, float]]:
        wanted = set(adapter_ids)
        return {k: v for k, v in self._counts.items() if k.split("@", 1)[0] in wanted}


def usage_board(records: Records | None = None) -> Any:
    """The cluster's usage board (created on first use, restoring ``records``; detached: it outlives router
    replicas)."""
    return detached_board(UsageBoard, BOARD_NAME, records)


def _add(counts: dict[str, tuple[int, float]], key: str, n: int, last: float) -> None:
    """``counts[key] += (n requests, last used)``."""
    m, t = counts.get(key, (0, 0.0))
    counts[key] = (n + m, max(last, t))


class UsageCounter:
    """A router replica's side: count in memory, flush in the background, read merged."""

    def __init__(self, flush_s: float = 2.0, records: Records | None = None) -> None:
        self._flush_s = flush_s
        self._records = records
        self._pending: dict[str, tuple[int, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def count(self, versions: list[tuple[str, str]]) -> None:
        """One answered request that used these ``(id, version)`` pairs."""
        now = time.time()
        for adapter_id, version in set(versions):
            _add(self._pending, f"{adapter_id}@{version}", 1, now)
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: counted, flushed by the next reader
                self._task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)
        await self.flush()

    async def flush(self) -> None:
        """Add the pending counts to the board (kept for the next flush when that fails)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await usage_board(self._records).add.remote(batch)
        except Exception as e:
            log.warning("adapter usage flush failed (kept for the next one): %s", e)
            for key, (n, last) in batch.items():
                _add(self._pending, key, n, last)

    async def read(self, adapter_ids: list[str]) -> dict[str, dict[str, Any]]:
        """``"id@version" -> {"requests", "last_used"}`` for these adapters, cluster-wide."""
        try:
            counts = dict(await usage_board(self._records).get.remote(adapter_ids))
        except Exception as e:  # the board is bookkeeping: its absence must not fail a metadata read
            log.warning("adapter usage board unavailable: %s", e)
            counts = {}
        wanted = set(adapter_ids)
        for key, (n, last) in self._pending.items():
            if key.split("@", 1)[0] in wanted:
                _add(counts, key, n, last)
        return {k: {"requests": n, "last_used": last} for k, (n, last) in counts.items()}
