"""The clean room over one retailer's DuckDB file: load data, answer structured queries under policy.

Contract of :meth:`CleanRoom.query`: returns only cells with at least ``policy.k`` DISTINCT shoppers;
reports how many cells were suppressed and why; releases the combined remainder of the suppressed cells
only when it, too, has at least ``k`` distinct shoppers; lists requested fields the policy blocked;
refuses a release whose populations differ from one of the tenant's earlier releases by 1..k-1 shoppers;
answers an identical repeated query with the identical stored answer; audits every query durably.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cleanroom.audit import QueryAudit
from cleanroom.errors import CleanRoomError, PolicyViolation
from cleanroom.history import Population, ReleaseHistory, population
from cleanroom.policy import CleanRoomPolicy
from cleanroom.query import Query, compile_query
from cleanroom.schema import EVENT_COLUMNS


@dataclass
class QueryResult:
    """What a query releases."""

    cells: list[dict[str, Any]]
    suppressed_cells: int
    suppression_reason: str | None
    remainder: dict[str, Any] | None
    remainder_released: bool
    blocked_fields: list[str] = field(default_factory=list)


class CleanRoom:
    """One retailer's events in a file-backed DuckDB database, queried under its policy."""

    def __init__(
        self, db_path: Path | str, policy: CleanRoomPolicy, audit_path: Path | str | None = None
    ) -> None:
        import duckdb

        self.policy = policy
        self.history = ReleaseHistory(Path(db_path).with_suffix(".releases.jsonl"))
        self.audit = QueryAudit(audit_path or Path(db_path).with_suffix(".audit.jsonl"))
        try:
            self._con = duckdb.connect(str(db_path))
        except duckdb.IOException as e:
            raise CleanRoomError(
                f"cannot open {db_path}: {e} (is a server using it? DuckDB allows one process)"
            ) from e
        self._lock = threading.Lock()
        cols = ", ".join(f'"{c}" {t}' for c, t in EVENT_COLUMNS.items())
        self._con.execute(f"CREATE TABLE IF NOT EXISTS events ({cols})")

    def load(self, path: Path | str) -> int:
        """Append a CSV or Parquet file in the documented schema; returns rows loaded."""
        path = Path(path)
        reader = {".csv": "read_csv_auto", ".parquet": "read_parquet"}.get(path.suffix)
        if reader is None:
            raise CleanRoomError(f"{path.name}: expected a .csv or .parquet file")
        with self._lock:
            probe = self._con.execute(f"SELECT * FROM {reader}(?) LIMIT 0", [str(path)])
            got = {d[0] for d in probe.description}
            missing = sorted(set(EVENT_COLUMNS) - got)
            if missing:
                raise CleanRoomError(f"{path.name}: missing columns {missing}")
            before = self._count()
            cols = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
            self._con.execute(f"INSERT INTO events SELECT {cols} FROM {reader}(?)", [str(path)])
            return self._count() - before

    def close(self) -> None:
        """Release the DuckDB file (another process may open it then)."""
        self._con.close()

    def _count(self) -> int:
        row = self._con.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    def query(self, tenant: str, q: Query) -> QueryResult:
        """Answer ``q`` for ``tenant`` under the policy (see the module contract)."""
        key = q.model_dump_json()
        cached = self.history.cached(tenant, key)
        if cached is not None:
            result = QueryResult(**cached)
            self._audit(tenant, q, "accepted", result, reason="identical to an earlier query: stored answer")
            return result
        try:
            result, populations = self._answer(q)
            worst = self.history.conflict(tenant, populations, self.policy.k)
            if worst is not None:
                raise PolicyViolation(
                    f"refused: a released cell would differ from one of your earlier results by {worst} "
                    f"shopper(s), fewer than k={self.policy.k} (differencing)"
                )
        except PolicyViolation as e:
            self._audit(tenant, q, "refused", None, reason=str(e))
            raise
        self.history.remember(tenant, key, populations, asdict(result))
        self._audit(tenant, q, "accepted", result)
        return result

    def _audit(
        self, tenant: str, q: Query, decision: str, result: QueryResult | None, reason: str = ""
    ) -> None:
        self.audit.record(
            retailer=self.policy.retailer,
            tenant=tenant,
            query=q.model_dump(mode="json"),
            decision=decision,
            reason=reason,
            cells_released=len(result.cells) if result else 0,
            cells_suppressed=result.suppressed_cells if result else 0,
            epsilon_spent=0.0,
        )

    def _answer(self, q: Query) -> tuple[QueryResult, list[Population]]:
        c = compile_query(q, self.policy)
        k = self.policy.k
        with self._lock:
            cur = self._con.cursor()
            rows = cur.execute(c.cells_sql, c.params).fetchall()
            names = [d[0] for d in cur.description]
            if len(rows) > self.policy.max_groups:
                raise PolicyViolation(
                    f"the query produces {len(rows)} cells, above the policy's {self.policy.max_groups}"
                )
            cells, suppressed = [], 0
            for row in rows:
                rec = dict(zip(names, row, strict=True))
                if rec.pop("__n") >= k:
                    cells.append(rec)
                else:
                    suppressed += 1
            remainder, released = None, False
            if suppressed and c.remainder_sql:
                rrow = cur.execute(c.remainder_sql, [*c.params, k]).fetchone()
                rnames = [d[0] for d in cur.description]
                rec = dict(zip(rnames, rrow, strict=True)) if rrow else {}
                if rec.get("__n", 0) >= k:
                    released = True
                    remainder = {m: rec[m] for m in c.metrics}
            populations = [
                population(r[0]) for r in cur.execute(c.populations_sql, [*c.params, k]).fetchall()
            ]
            if released:
                prow = cur.execute(c.remainder_population_sql, [*c.params, k]).fetchone()
                populations.append(population(prow[0] if prow else []))
        reason = f"fewer than {k} distinct shoppers" if suppressed else None
        return QueryResult(cells, suppressed, reason, remainder, released, c.blocked_fields), populations
