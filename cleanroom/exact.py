"""Exact answers for trusted partners: cells with at least k DISTINCT shoppers, the combined remainder only when
it has k too, and the room-wide difference check that refuses a release whose cell populations differ from any
earlier release's (whoever asked) by 1..k-1 shoppers."""

from __future__ import annotations

from cleanroom.errors import PolicyViolation
from cleanroom.history import Release, ReleaseHistory
from cleanroom.policy import CleanRoomPolicy
from cleanroom.query import REST, CompiledQuery, Query
from cleanroom.results import QueryResult, jsonable
from cleanroom.store import EventStore, quote


def answer_exact(
    store: EventStore, policy: CleanRoomPolicy, c: CompiledQuery, key: str, q: Query, k: int
) -> tuple[QueryResult, Release]:
    """The exact release of ``c`` at threshold ``k`` and its record for later difference checks."""
    cells, sizes, suppressed = [], {}, 0
    for rec in store.cells(c, policy.max_groups):
        n, ck = rec.pop("__n"), rec.pop("__ck")
        if n >= k:
            cells.append(rec)
            sizes[ck] = n
        else:
            suppressed += 1
    remainder, released = None, False
    if suppressed and c.remainder_sql:
        rec = store.one(c.remainder_sql, [*c.params, k]) or {}
        if rec.get("__n", 0) >= k:
            released = True
            remainder = {m: rec[m] for m in c.metrics}
            sizes[REST] = rec["__n"]
    reason = f"fewer than {k} distinct shoppers" if suppressed else None
    result = QueryResult(cells, suppressed, reason, remainder, released, c.blocked_fields)
    release = Release(
        key, q.model_dump(mode="json"), store.version, sizes, c.where_sql, c.ck_sql, jsonable(c.params)
    )
    return result, release


def check_differences(
    store: EventStore, history: ReleaseHistory, identity_column: str, c: CompiledQuery, new: Release, k: int
) -> None:
    """Refuse when a released cell's population (its rows' shoppers) differs from a cell of an earlier
    release of the room, whoever asked, by 1..k-1 shoppers. Only cells whose sizes are within k - 1 can
    (:meth:`ReleaseHistory.candidates`), and only pairs that share rows (cells sharing none differ by all
    their shoppers, >= k). One scan of ``events`` tags each row with its cell in both releases (cells not
    released fold into the remainder); the symmetric difference of a pair's rows is counted in distinct
    shoppers."""
    for old, new_keys, old_keys in history.candidates(new.cells, k):
        if (old.where_sql, old.ck_sql, old.params) == (new.where_sql, new.ck_sql, new.params):
            continue  # the same rows cell by cell (a repeat by another tenant): nothing differs
        sql = _difference_sql(quote(identity_column), new, old)
        params = [
            *c.params,
            *old.params,
            *c.params,
            *old.params,
            list(new.cells),
            list(old.cells),
            sorted(new_keys),
            sorted(old_keys),
            k,
        ]
        if store.one(sql, params) is not None:
            raise PolicyViolation(
                f"refused: a released cell would differ from an earlier release of this clean room "
                f"(any tenant's) by fewer than k={k} shoppers (differencing)"
            )


def _difference_sql(ident: str, new: Release, old: Release) -> str:
    """One row when some pair of cells (new, old) differs by fewer than k distinct shoppers."""
    return (
        f"WITH tagged AS (SELECT {ident} AS sid, CASE WHEN {new.where_sql} THEN {new.ck_sql} END AS na, "
        f"CASE WHEN {old.where_sql} THEN {old.ck_sql} END AS nb FROM events "
        f"WHERE ({new.where_sql}) OR ({old.where_sql})), "
        "ra AS (SELECT DISTINCT unnest(?) AS k), rb AS (SELECT DISTINCT unnest(?) AS k), "
        "ka AS (SELECT DISTINCT unnest(?) AS k), kb AS (SELECT DISTINCT unnest(?) AS k), "
        "folded AS (SELECT sid, CASE WHEN na IS NULL THEN NULL WHEN ra.k IS NOT NULL THEN na "
        f"ELSE '{REST}' END AS fa, CASE WHEN nb IS NULL THEN NULL WHEN rb.k IS NOT NULL THEN nb "
        f"ELSE '{REST}' END AS fb FROM tagged LEFT JOIN ra ON ra.k = na LEFT JOIN rb ON rb.k = nb), "
        "j AS (SELECT sid, ka.k AS ack, kb.k AS bck FROM folded LEFT JOIN ka ON ka.k = fa "
        "LEFT JOIN kb ON kb.k = fb WHERE ka.k IS NOT NULL OR kb.k IS NOT NULL), "
        "pairs AS (SELECT DISTINCT ack, bck FROM j WHERE ack IS NOT NULL AND bck IS NOT NULL), "
        "d AS (SELECT p.ack, p.bck, j.sid FROM pairs p JOIN j ON j.ack = p.ack "
        "WHERE j.bck IS DISTINCT FROM p.bck UNION ALL SELECT p.ack, p.bck, j.sid FROM pairs p "
        "JOIN j ON j.bck = p.bck WHERE j.ack IS DISTINCT FROM p.ack) "
        "SELECT COUNT(DISTINCT sid) AS n FROM d GROUP BY ack, bck HAVING n < ? LIMIT 1"
    )
