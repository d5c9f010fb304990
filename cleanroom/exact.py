"""Exact answers for trusted partners: cells with at least k DISTINCT shoppers, the combined remainder only when
it has k too, and the room-wide difference check that refuses a release whose populations (each released cell
and the union of its cells) differ from any earlier release's (whoever asked) by fewer than k shoppers."""

from __future__ import annotations

from typing import Any

from cleanroom.errors import PolicyViolation
from cleanroom.history import Release, ReleaseHistory
from cleanroom.policy import CleanRoomPolicy
from cleanroom.query import EVENTS, REST, CompiledQuery, Query
from cleanroom.results import QueryResult, jsonable
from cleanroom.schema import quote
from cleanroom.store import EventStore

# the key of a release's union of released cells: NUL-led, so no cell key (dimension values joined by
# U+001F, NULL spelled U+0000 alone) can equal it
ALL = "\x00all"


def answer_exact(
    store: EventStore, policy: CleanRoomPolicy, c: CompiledQuery, key: str, q: Query, k: int
) -> tuple[QueryResult, Release, int]:
    """The exact release of ``c`` at threshold ``k`` and its record for later difference checks: the
    distinct shoppers of each released cell and, for a release of two or more cells, of their union
    (``ALL``: what the sum of its cells covers)."""
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
    whole = released or not suppressed
    if len(sizes) > 1:
        sizes[ALL] = _union_size(store, policy.identity_column, c, list(sizes), whole)
    if policy.report_suppressed_cells:
        count, reason = suppressed, (f"fewer than {k} distinct shoppers" if suppressed else None)
    else:  # whether anything was withheld is data too: say the rule, not the count
        count, reason = None, f"cells with fewer than {k} distinct shoppers are withheld"
    result = QueryResult(cells, count, reason, remainder, released, c.blocked_fields)
    release = Release(
        key, q.model_dump(mode="json"), store.version, sizes, c.where_sql, c.ck_sql, jsonable(c.params), whole
    )
    return result, release, suppressed


def _union_size(
    store: EventStore, identity_column: str, c: CompiledQuery, keys: list[str], whole: bool
) -> int:
    """Distinct shoppers of the released cells together: every row of the query (``whole``: nothing was
    withheld, or the remainder was released too) or the rows of the released cells."""
    ident = quote(identity_column)
    if whole:
        rec = store.one(f"SELECT COUNT(DISTINCT {ident}) AS n FROM {EVENTS} WHERE {c.where_sql}", c.params)
    else:
        rec = store.one(
            f"SELECT COUNT(DISTINCT {ident}) AS n FROM {EVENTS} WHERE ({c.where_sql}) AND {c.ck_sql} IN "
            "(SELECT unnest(?))",
            [*c.params, keys],
        )
    return int(rec["n"]) if rec else 0


def _shape(r: Release, key: str) -> tuple[Any, ...]:
    """What selects a population's rows, the data version aside: equal shapes select the same rows of the
    same data, so two populations of equal shape differ only by rows loaded between their releases."""
    rows = (r.where_sql, tuple(map(str, r.params[:-1])))
    if key == "*" or (r.whole and (key == ALL or len(r.cells) == 1)):
        return ("rows", *rows)  # every row of the filter: an ungrouped cell, a union that withheld nothing
    if key == ALL:
        return ("union", *rows, r.ck_sql, tuple(sorted(x for x in r.cells if x != ALL)))
    return ("cell", *rows, r.ck_sql, key)


def _same_shape(new: Release, old: Release, new_keys: set[str], old_keys: set[str]) -> list[list[str]]:
    """The candidate pairs (new key, old key) whose populations have the same shape."""
    shapes: dict[tuple[Any, ...], list[str]] = {}
    for key in old_keys:
        shapes.setdefault(_shape(old, key), []).append(key)
    return [[a, b] for a in sorted(new_keys) for b in shapes.get(_shape(new, a), [])]


def check_differences(
    store: EventStore, history: ReleaseHistory, identity_column: str, c: CompiledQuery, new: Release, k: int
) -> None:
    """Refuse when a released population — a cell's rows, or the union of a release's cells — differs from
    a population of an earlier release of the room, whoever asked, by fewer than k shoppers (counted on
    rows: a shopper with a row in one and not the other). Between populations selected differently a
    difference of 0 is refused too, so a refusal never tells a querier-chosen 0 from 1: it says only that
    some difference has fewer than k shoppers, as withholding a cell does. Populations of the same shape at
    another data version refuse 1..k-1 (their difference is the new data, which no querier chose). Only
    populations whose sizes are within k - 1 can differ by less (:meth:`ReleaseHistory.candidates`), and only
    pairs that share rows (the others differ by all their shoppers, >= k): per earlier release, one scan for
    the pairs of cells and one aggregate for the pairs with a union."""
    ident = quote(identity_column)
    for old, new_keys, old_keys in history.candidates(new.cells, k):
        if (old.where_sql, old.ck_sql, old.params) == (new.where_sql, new.ck_sql, new.params):
            continue  # the same rows cell by cell (a repeat by another tenant): nothing differs
        same = _same_shape(new, old, new_keys, old_keys)
        cells_new, cells_old = sorted(new_keys - {ALL}), sorted(old_keys - {ALL})
        refused = False
        if cells_new and cells_old:
            params = [*c.params, *old.params, *c.params, *old.params]
            params += [_cells(new), _cells(old), cells_new, cells_old, k, same]
            refused = store.one(_difference_sql(ident, new, old), params) is not None
        pairs = _union_pairs(new, old, k)
        if not refused and pairs:
            refused = _union_refused(store, ident, new, old, pairs, k, same)
        if refused:
            raise PolicyViolation(
                f"refused: a released cell would differ from an earlier release of this clean room "
                f"(any tenant's) by fewer than k={k} shoppers (differencing)"
            )


def _cells(r: Release) -> list[str]:
    """A release's released cell keys (the remainder's included), without its union."""
    return [x for x in r.cells if x != ALL]


def _union_pairs(new: Release, old: Release, k: int) -> list[tuple[str, str]]:
    """The (new, old) population pairs with a union on either side whose sizes are within k - 1."""
    pairs = []
    if ALL in new.cells:
        pairs += [(ALL, b) for b, n in old.cells.items() if abs(new.cells[ALL] - n) < k]
    if ALL in old.cells:
        pairs += [(a, ALL) for a, n in new.cells.items() if a != ALL and abs(old.cells[ALL] - n) < k]
    return pairs


def _member(r: Release, key: str) -> tuple[str, list[Any]]:
    """SQL (and its parameters) true for the rows of population ``key`` of release ``r``."""
    cells = _cells(r)
    if key == ALL and r.whole:
        return f"({r.where_sql})", list(r.params)
    if key == ALL:
        return f"(({r.where_sql}) AND {r.ck_sql} IN (SELECT unnest(?)))", [*r.params, cells]
    if key == REST:  # the withheld cells' rows
        kept = [x for x in cells if x != REST]
        return f"(({r.where_sql}) AND {r.ck_sql} NOT IN (SELECT unnest(?)))", [*r.params, kept]
    return f"(({r.where_sql}) AND {r.ck_sql} = ?)", [*r.params, key]


def _union_refused(
    store: EventStore,
    ident: str,
    new: Release,
    old: Release,
    pairs: list[tuple[str, str]],
    k: int,
    same: list[list[str]],
) -> bool:
    """One aggregate over both releases' rows: per pair, the distinct shoppers with a row in exactly one of
    the two populations and the rows they share."""
    exprs: list[str] = []
    params: list[Any] = []
    for a, b in pairs:
        (ma, pa), (mb, pb) = _member(new, a), _member(old, b)
        inside, outside = f"coalesce({ma}, false)", f"coalesce({mb}, false)"
        exprs.append(f"COUNT(DISTINCT {ident}) FILTER (WHERE {inside} <> {outside})")
        exprs.append(f"COUNT(*) FILTER (WHERE {inside} AND {outside})")
        params += [*pa, *pb, *pa, *pb]
    sql = f"SELECT {', '.join(exprs)} FROM {EVENTS} WHERE ({new.where_sql}) OR ({old.where_sql})"
    row = store.one(sql, [*params, *new.params, *old.params]) or {}
    values = list(row.values())
    for i, (a, b) in enumerate(pairs):
        differ, shared = values[2 * i], values[2 * i + 1]
        if shared and differ < k and (differ > 0 or [a, b] not in same):
            return True
    return False


def _difference_sql(ident: str, new: Release, old: Release) -> str:
    """One row when a pair of cells (new, old) sharing rows differs by fewer than k distinct shoppers (0
    included unless the pair is in the last parameter: same shape). One scan of ``events`` tags each row
    with its cell in both releases (cells not released fold into the remainder)."""
    return (
        f"WITH tagged AS (SELECT {ident} AS sid, CASE WHEN {new.where_sql} THEN {new.ck_sql} END AS na, "
        f"CASE WHEN {old.where_sql} THEN {old.ck_sql} END AS nb FROM {EVENTS} "
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
        "JOIN j ON j.bck = p.bck WHERE j.ack IS DISTINCT FROM p.ack), "
        "n AS (SELECT p.ack, p.bck, COUNT(DISTINCT d.sid) AS n FROM pairs p LEFT JOIN d ON d.ack = p.ack "
        "AND d.bck = p.bck GROUP BY p.ack, p.bck) "
        "SELECT n FROM n WHERE n < ? AND (n > 0 OR [ack, bck] NOT IN (SELECT unnest(?::VARCHAR[][]))) LIMIT 1"
    )
