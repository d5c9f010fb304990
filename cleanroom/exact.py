"""Exact answers for trusted partners: cells with at least k DISTINCT shoppers, the combined remainder only when
it has k too, and the room-wide difference check that refuses a release whose populations (each released cell
and the union of its cells) differ from any earlier release's (whoever asked) by fewer than k shoppers."""

from __future__ import annotations

from typing import Any

from cleanroom.errors import PolicyViolation
from cleanroom.history import Release, ReleaseHistory
from cleanroom.policy import CleanRoomPolicy
from cleanroom.query import REST, CompiledQuery, Query

# the key of a release's union of released cells: NUL-led, so no cell key (dimension values joined by
# U+001F, NULL spelled U+0000 alone) can equal it
ALL = "\x00all"
_ALL = "(chr(0) || 'all')"
from cleanroom.results import QueryResult, jsonable
from cleanroom.store import EventStore, quote


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
        rec = store.one(f"SELECT COUNT(DISTINCT {ident}) AS n FROM events WHERE {c.where_sql}", c.params)
    else:
        rec = store.one(
            f"SELECT COUNT(DISTINCT {ident}) AS n FROM events WHERE ({c.where_sql}) AND {c.ck_sql} IN "
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
    another data version refuse 1..k-1 (their difference is the new data, which no querier chose). Only populations whose sizes are within
    k - 1 can differ by less (:meth:`ReleaseHistory.candidates`), and only pairs that share rows (the
    others differ by all their shoppers, >= k); one scan of ``events`` per earlier release."""
    for old, new_keys, old_keys in history.candidates(new.cells, k):
        if (old.where_sql, old.ck_sql, old.params) == (new.where_sql, new.ck_sql, new.params):
            continue  # the same rows cell by cell (a repeat by another tenant): nothing differs
        sql = _difference_sql(quote(identity_column), new, old)
        params = [
            *c.params,
            *old.params,
            *c.params,
            *old.params,
            [x for x in new.cells if x != ALL],
            [x for x in old.cells if x != ALL],
            sorted(new_keys),
            sorted(old_keys),
            k,
            _same_shape(new, old, new_keys, old_keys),
        ]
        if store.one(sql, params) is not None:
            raise PolicyViolation(
                f"refused: a released cell would differ from an earlier release of this clean room "
                f"(any tenant's) by fewer than k={k} shoppers (differencing)"
            )


def _difference_sql(ident: str, new: Release, old: Release) -> str:
    """One row when a pair of populations (new, old), cells or the union ``ALL``, sharing rows differs by
    fewer than k distinct shoppers (0 included unless the pair is in the last parameter: same shape). Rows are reduced to distinct
    (shopper, cell in new, in new's union, cell in old, in old's union) first."""
    return (
        f"WITH tagged AS (SELECT {ident} AS sid, CASE WHEN {new.where_sql} THEN {new.ck_sql} END AS na, "
        f"CASE WHEN {old.where_sql} THEN {old.ck_sql} END AS nb FROM events "
        f"WHERE ({new.where_sql}) OR ({old.where_sql})), "
        "ra AS (SELECT DISTINCT unnest(?) AS k), rb AS (SELECT DISTINCT unnest(?) AS k), "
        "ka AS (SELECT DISTINCT unnest(?) AS k), kb AS (SELECT DISTINCT unnest(?) AS k), "
        "folded AS (SELECT sid, CASE WHEN na IS NULL THEN NULL WHEN ra.k IS NOT NULL THEN na "
        f"ELSE '{REST}' END AS fa, CASE WHEN nb IS NULL THEN NULL WHEN rb.k IS NOT NULL THEN nb "
        f"ELSE '{REST}' END AS fb FROM tagged LEFT JOIN ra ON ra.k = na LEFT JOIN rb ON rb.k = nb), "
        "t AS (SELECT DISTINCT sid, fa, coalesce(fa IN (SELECT k FROM ra), false) AS ua, fb, "
        "coalesce(fb IN (SELECT k FROM rb), false) AS ub FROM folded), "
        f"ea AS (SELECT sid, fa AS a, fb, ub FROM t WHERE fa IN (SELECT k FROM ka) UNION ALL "
        f"SELECT sid, {_ALL}, fb, ub FROM t WHERE ua AND {_ALL} IN (SELECT k FROM ka)), "
        f"eb AS (SELECT sid, fb AS b, fa, ua FROM t WHERE fb IN (SELECT k FROM kb) UNION ALL "
        f"SELECT sid, {_ALL}, fa, ua FROM t WHERE ub AND {_ALL} IN (SELECT k FROM kb)), "
        f"pairs AS (SELECT DISTINCT a, b FROM (SELECT fa AS a, fb AS b FROM t UNION ALL "
        f"SELECT fa, {_ALL} FROM t WHERE ub UNION ALL SELECT {_ALL}, fb FROM t WHERE ua UNION ALL "
        f"SELECT {_ALL}, {_ALL} FROM t WHERE ua AND ub) "
        "WHERE a IN (SELECT k FROM ka) AND b IN (SELECT k FROM kb)), "
        "d AS (SELECT p.a, p.b, ea.sid FROM pairs p JOIN ea ON ea.a = p.a "
        f"WHERE NOT (coalesce(ea.fb = p.b, false) OR (p.b = {_ALL} AND ea.ub)) "
        "UNION ALL SELECT p.a, p.b, eb.sid FROM pairs p JOIN eb ON eb.b = p.b "
        f"WHERE NOT (coalesce(eb.fa = p.a, false) OR (p.a = {_ALL} AND eb.ua))), "
        "n AS (SELECT p.a, p.b, COUNT(DISTINCT d.sid) AS n FROM pairs p LEFT JOIN d ON d.a = p.a "
        "AND d.b = p.b GROUP BY p.a, p.b) "
        "SELECT n FROM n WHERE n < ? AND (n > 0 OR [a, b] NOT IN (SELECT unnest(?::VARCHAR[][]))) LIMIT 1"
    )
