"""The clean room over one retailer's DuckDB file: load data, answer structured queries under policy.

Contract of :meth:`CleanRoom.query`: returns only cells with at least ``policy.k`` DISTINCT shoppers (under
differential privacy: a NOISY count of at least k, and noisy values); reports how many cells were
suppressed and why; releases the combined remainder of the suppressed cells only when it, too, has at
least ``k`` distinct shoppers (never under DP); lists requested fields the policy blocked; refuses a
release whose populations differ from one of the tenant's earlier releases by 1..k-1 shoppers (without
DP; with DP the noise and the epsilon budget bound what differencing can learn); charges epsilon to the
tenant's persisted ledger before a noisy answer leaves and refuses once the budget is spent; answers an
identical repeated query with the identical stored answer; audits every query durably.

Loads are append-only batches; each row carries its batch number (the data version), so an earlier
release's populations can be recomputed exactly for difference checks.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cleanroom.audit import QueryAudit
from cleanroom.dp import EpsilonLedger, laplace
from cleanroom.errors import CleanRoomError, PolicyViolation
from cleanroom.history import Release, ReleaseHistory
from cleanroom.policy import CleanRoomPolicy, DPPolicy
from cleanroom.query import REST, CompiledQuery, Query, compile_query
from cleanroom.schema import EVENT_COLUMNS, INTEGER_METRICS, NUMERIC_COLUMNS


@dataclass
class QueryResult:
    """What a query releases."""

    cells: list[dict[str, Any]]
    suppressed_cells: int
    suppression_reason: str | None
    remainder: dict[str, Any] | None
    remainder_released: bool
    blocked_fields: list[str] = field(default_factory=list)
    epsilon_spent: float = 0.0  # by this call (0 for a stored answer)
    noisy: bool = False
    stored_answer: bool = False  # the identical query was answered before: the same answer again


class CleanRoom:
    """One retailer's events in a file-backed DuckDB database, queried under its policy."""

    def __init__(
        self, db_path: Path | str, policy: CleanRoomPolicy, audit_path: Path | str | None = None
    ) -> None:
        import duckdb

        self.policy = policy
        db = Path(db_path)
        self.history = ReleaseHistory(db.with_suffix(".releases.jsonl"))
        self.audit = QueryAudit(audit_path or db.with_suffix(".audit.jsonl"))
        self.ledger = EpsilonLedger(db.with_suffix(".epsilon.jsonl"))
        try:
            self._con = duckdb.connect(str(db_path))
        except duckdb.IOException as e:
            raise CleanRoomError(
                f"cannot open {db_path}: {e} (is a server using it? DuckDB allows one process)"
            ) from e
        self._lock = threading.Lock()
        cols = ", ".join(f'"{c}" {t}' for c, t in EVENT_COLUMNS.items())
        self._con.execute(f'CREATE TABLE IF NOT EXISTS events ({cols}, "_batch" INTEGER NOT NULL)')
        self._con.execute('ALTER TABLE events ADD COLUMN IF NOT EXISTS "_batch" INTEGER DEFAULT 0')
        row = self._con.execute('SELECT COALESCE(MAX("_batch"), 0) FROM events').fetchone()
        self.version = int(row[0]) if row else 0

    def load(self, path: Path | str, mapping: dict[str, str] | None = None) -> int:
        """Append a CSV or Parquet file in the documented schema as a new batch; returns rows loaded.
        ``mapping`` renames the file's columns (native -> schema; see ``federation.planning.harmonize``); other
        columns are ignored. Refuses (loading nothing) missing columns, missing shopper ids and NaN,
        infinite or negative numbers."""
        path = Path(path)
        reader = {".csv": "read_csv_auto", ".parquet": "read_parquet"}.get(path.suffix)
        if reader is None:
            raise CleanRoomError(f"{path.name}: expected a .csv or .parquet file")
        with self._lock:
            probe = self._con.execute(f"SELECT * FROM {reader}(?) LIMIT 0", [str(path)])
            source = {(mapping or {}).get(d[0], d[0]): d[0] for d in probe.description}  # schema -> file
            missing = sorted(set(EVENT_COLUMNS) - set(source))
            if missing:
                raise CleanRoomError(f"{path.name}: missing columns {missing}")
            batch = self.version + 1
            cols = ", ".join(_quote(source[c]) + f' AS "{c}"' for c in EVENT_COLUMNS)
            casts = ", ".join(f'CAST("{c}" AS {t})' for c, t in EVENT_COLUMNS.items())
            self._con.execute("BEGIN TRANSACTION")
            try:
                self._con.execute(
                    f"INSERT INTO events SELECT {casts}, ? FROM (SELECT {cols} FROM {reader}(?))",
                    [batch, str(path)],
                )
                self._check_batch(path.name, batch)
            except Exception as e:
                self._con.execute("ROLLBACK")
                if isinstance(e, CleanRoomError):
                    raise
                raise CleanRoomError(f"{path.name}: {e}") from e
            self._con.execute("COMMIT")
            self.version = batch
            row = self._con.execute('SELECT COUNT(*) FROM events WHERE "_batch" = ?', [batch]).fetchone()
            return int(row[0]) if row else 0

    def _check_batch(self, name: str, batch: int) -> None:
        checks = [('"shopper_id" IS NULL OR "shopper_id" = \'\'', "shopper_id is missing")]
        for c in NUMERIC_COLUMNS:
            checks.append((f'isnan("{c}") OR isinf("{c}") OR "{c}" < 0', f"{c} is NaN, infinite or negative"))
        for cond, what in checks:
            row = self._con.execute(
                f'SELECT COUNT(*) FROM events WHERE "_batch" = ? AND ({cond})', [batch]
            ).fetchone()
            if row and row[0]:
                raise CleanRoomError(f"{name}: {row[0]} row(s) where {what}; nothing loaded")

    def close(self) -> None:
        """Release the DuckDB file (another process may open it then)."""
        self._con.close()

    def budget(self, tenant: str) -> dict[str, Any]:
        """``tenant``'s differential-privacy budget: total, spent, remaining, per-query default."""
        dp = self.policy.dp
        spent = self.ledger.spent(tenant)
        return {
            "retailer": self.policy.retailer,
            "tenant": tenant,
            "dp": dp is not None,
            "epsilon_budget": dp.epsilon_budget if dp else None,
            "epsilon_spent": round(spent, 9),
            "epsilon_remaining": round(max(dp.epsilon_budget - spent, 0.0), 9) if dp else None,
            "epsilon_per_query": dp.epsilon_per_query if dp else None,
            "max_epsilon_per_query": dp.max_epsilon_per_query if dp else None,
        }

    def query(self, tenant: str, q: Query) -> QueryResult:
        """Answer ``q`` for ``tenant`` under the policy (see the module contract)."""
        dp = self.policy.dp
        if dp is not None and q.epsilon is None:
            q = q.model_copy(update={"epsilon": dp.epsilon_per_query})
        key = q.model_dump_json()
        with self._lock:
            cached = self.history.cached(tenant, key)
            if cached is not None:
                result = QueryResult(**{**cached, "epsilon_spent": 0.0, "stored_answer": True})
                self._audit(
                    tenant, q, "accepted", result, reason="identical to an earlier query: stored answer"
                )
                return result
            try:
                c = compile_query(q, self.policy, self.version)
                if dp is not None:
                    epsilon = q.epsilon or dp.epsilon_per_query
                    result, release = self._answer_dp(tenant, q, c, key, dp, epsilon)
                else:
                    result, release = self._answer(c, key, q)
                    self._check_differences(tenant, c, release)
            except PolicyViolation as e:
                self._audit(tenant, q, "refused", None, reason=str(e))
                raise
            self.history.remember(tenant, release, asdict(result))
            self._audit(tenant, q, "accepted", result)
            return result

    def audit_refusal(self, tenant: str, query: object, reason: str) -> None:
        """Audit a query refused before it could be parsed or run (malformed, rate-limited)."""
        text = query if isinstance(query, dict) else {"unparsed": str(query)[:2000]}
        self.audit.record(
            retailer=self.policy.retailer,
            tenant=tenant,
            query=text,
            decision="refused",
            reason=reason,
            cells_released=0,
            cells_suppressed=0,
            epsilon_spent=0.0,
        )

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
            epsilon_spent=result.epsilon_spent if result and reason == "" else 0.0,
        )

    def _cells(self, c: CompiledQuery) -> list[dict[str, Any]]:
        cur = self._con.cursor()
        rows = cur.execute(c.cells_sql, c.params).fetchall()
        if len(rows) > self.policy.max_groups:
            raise PolicyViolation(
                f"the query produces {len(rows)} cells, above the policy's {self.policy.max_groups}"
            )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _answer(self, c: CompiledQuery, key: str, q: Query) -> tuple[QueryResult, Release]:
        k = self.policy.k
        cells, sizes, suppressed = [], {}, 0
        for rec in self._cells(c):
            n, ck = rec.pop("__n"), rec.pop("__ck")
            if n >= k:
                cells.append(rec)
                sizes[ck] = n
            else:
                suppressed += 1
        remainder, released = None, False
        if suppressed and c.remainder_sql:
            cur = self._con.cursor()
            rrow = cur.execute(c.remainder_sql, [*c.params, k]).fetchone()
            rec = dict(zip([d[0] for d in cur.description], rrow, strict=True)) if rrow else {}
            if rec.get("__n", 0) >= k:
                released = True
                remainder = {m: rec[m] for m in c.metrics}
                sizes[REST] = rec["__n"]
        reason = f"fewer than {k} distinct shoppers" if suppressed else None
        result = QueryResult(cells, suppressed, reason, remainder, released, c.blocked_fields)
        release = Release(
            key, q.model_dump(mode="json"), self.version, sizes, c.population_sql, _jsonable(c.params)
        )
        return result, release

    def _check_differences(self, tenant: str, c: CompiledQuery, new: Release) -> None:
        """Refuse when a released cell's population differs from an earlier one's by 1..k-1 shoppers."""
        k = self.policy.k
        worst: int | None = None
        for old, new_keys, old_keys in self.history.candidates(tenant, new.cells, k):
            sql = (
                f"SELECT a.ck, b.ck, COUNT(*) FROM ({new.population_sql}) a "
                f"JOIN ({old.population_sql}) b USING (sid) GROUP BY ALL"
            )
            params = [
                *c.params,
                list(new.cells),
                sorted(new_keys),
                *old.params,
                list(old.cells),
                sorted(old_keys),
            ]
            for a, b, both in self._con.cursor().execute(sql, params).fetchall():
                d = new.cells[a] + old.cells[b] - 2 * both
                if 0 < d < k and (worst is None or d < worst):
                    worst = d
        if worst is not None:
            raise PolicyViolation(
                f"refused: a released cell would differ from one of your earlier results by {worst} "
                f"shopper(s), fewer than k={k} (differencing)"
            )

    def _answer_dp(
        self, tenant: str, q: Query, c: CompiledQuery, key: str, dp: DPPolicy, epsilon: float
    ) -> tuple[QueryResult, Release]:
        if epsilon > dp.max_epsilon_per_query:
            raise PolicyViolation(
                f"epsilon {epsilon:g} is above the policy's {dp.max_epsilon_per_query:g} per query"
            )
        rows = self._cells(c)
        self.ledger.charge(tenant, epsilon, dp.epsilon_budget, key)  # before any noisy value exists
        share = epsilon / (len(c.metrics) + 1)
        L = dp.max_cells_per_shopper
        noisy_n, spent = laplace([r["__n"] for r in rows], L, share)
        noisy: dict[str, list[float]] = {}
        for m in c.metrics:
            noisy[m], eps = laplace([r[m] for r in rows], L * dp.metric_bounds[m], share)
            spent += eps
        k = self.policy.k
        cells, sizes, suppressed = [], {}, 0
        for i, rec in enumerate(rows):
            if noisy_n[i] < k:
                suppressed += 1
                continue
            out = {d: rec[d] for d in c.dimensions}
            for m in c.metrics:
                v = max(noisy[m][i], 0.0)
                out[m] = round(v) if m in INTEGER_METRICS else round(v, 2)
            cells.append(out)
            sizes[rec["__ck"]] = int(rec["__n"])
        reason = f"noisy count of distinct shoppers below {k}" if suppressed else None
        result = QueryResult(
            cells,
            suppressed,
            reason,
            None,
            False,
            c.blocked_fields,
            epsilon_spent=round(spent, 9),
            noisy=True,
        )
        release = Release(
            key, q.model_dump(mode="json"), self.version, sizes, c.population_sql, _jsonable(c.params)
        )
        return result, release


def _quote(name: str) -> str:
    """A column name of the loaded file as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _jsonable(params: list[object]) -> list[object]:
    """Query parameters as stored in the release history (dates as ISO strings; DuckDB casts them back)."""
    return [p if isinstance(p, str | int | float) else str(p) for p in params]
