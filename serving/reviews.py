"""The review queue of brand safety: ad lines the rules could not clear on their own wait as ``pending`` for a
person (a tenant of role ``reviewer``, or an admin) who approves or rejects each with a reason.

Contract of :class:`ReviewQueue` (pure Python; in a Serve app one instance lives in a detached Ray actor per
registry, :func:`review_board`, so every router replica sees one queue): :meth:`submit` records a line with
its verdict, who asked and for which brand and retailer; :meth:`list` returns reviews newest first (a
submitter sees its own, a reviewer all); :meth:`decide` moves a pending review to ``approved`` or
``rejected`` once (again: :class:`AlreadyDecided`, 409). Every change is written beside the registry
(``.rmn-records/reviews.json``, :class:`serving.records.Records`) and read back by a new cluster; the last
``keep`` reviews are kept. Decisions are audited by the caller (the gateway's audit log).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from federation.errors import InvalidRequest, NotFound
from serving.records import Records, RecordsUnavailable, board_call, detached_board

log = logging.getLogger("ray.serve")
BOARD_NAME = "rmn-reviews"
DOCUMENT = "reviews.json"


class AlreadyDecided(InvalidRequest):
    """The review was approved or rejected before (HTTP 409)."""


class ReviewQueue:
    """See the module contract."""

    def __init__(self, records: Records | None = None, keep: int = 5000) -> None:
        self._records, self._keep = records, keep
        self._reviews: dict[str, dict[str, Any]] = {}
        if records is not None:
            try:
                for rec in records.read(DOCUMENT) or []:
                    self._reviews[rec["id"]] = rec
            except RecordsUnavailable as e:  # start empty; the next write retries the store
                log.warning("reviews not read back: %s", e)

    def submit(
        self, tenant: str, brand: str | None, retailer: str | None, verdict: dict[str, Any]
    ) -> dict[str, Any]:
        """Queue one line (its rules/model verdict) as pending; the review record."""
        review = {
            "id": "rev-" + uuid.uuid4().hex[:16],
            "state": "pending",
            "submitted_by": tenant,
            "brand": brand,
            "retailer": retailer,
            "text": verdict["text"],
            "violations": list(verdict.get("violations", [])),
            "claims": dict(verdict.get("claims", {})),
            "created": time.time(),
            "decided_by": None,
            "decided": None,
            "reason": None,
        }
        self._reviews[review["id"]] = review
        while len(self._reviews) > self._keep:
            self._reviews.pop(next(iter(self._reviews)))
        self._persist()
        return dict(review)

    def list(
        self, submitted_by: str | None = None, state: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Reviews newest first: all (``submitted_by`` None: a reviewer) or one tenant's, optionally of one state."""
        out = [
            dict(r)
            for r in reversed(self._reviews.values())
            if (submitted_by is None or r["submitted_by"] == submitted_by)
            and (state is None or r["state"] == state)
        ]
        return out[:limit]

    def decide(self, review_id: str, reviewer: str, approve: bool, reason: str) -> dict[str, Any]:
        """Approve or reject a pending review, once."""
        review = self._reviews.get(review_id)
        if review is None:
            raise NotFound(f"no review {review_id!r}")
        if review["state"] != "pending":
            raise AlreadyDecided(
                f"review {review_id} was {review['state']} by {review['decided_by']} already"
            )
        review.update(
            state="approved" if approve else "rejected",
            decided_by=reviewer,
            decided=time.time(),
            reason=reason,
        )
        self._persist()
        return dict(review)

    def _persist(self) -> None:
        if self._records is None:
            return
        try:
            self._records.write(DOCUMENT, list(self._reviews.values()))
        except RecordsUnavailable as e:  # kept in memory; written again with the next change
            log.warning("reviews not persisted: %s", e)


def review_board(records: Records | None = None) -> Any:
    """The cluster's review queue (a detached actor named per registry, created on first use)."""
    return detached_board(ReviewQueue, BOARD_NAME, records)


class Reviews:
    """The gateway's side: the app's board in a Serve replica (``shared``), else a queue of its own (the
    gateway test tier)."""

    def __init__(self, records: Records, shared: bool) -> None:
        self._records = records
        self._local = None if shared else ReviewQueue(records)

    async def call(self, method: str, *args: Any) -> Any:
        """``ReviewQueue.<method>(*args)`` wherever the queue lives."""
        return await board_call(self._local, lambda: review_board(self._records), method, *args)
