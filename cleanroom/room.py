"""The clean room over one retailer's DuckDB file: load data, answer structured queries under policy.

Contract of :meth:`CleanRoom.query`:
- who asks is a :class:`Querier` (tenant id + the brands it may see); a brand-scoped tenant's queries
  cover its own brands' rows only (a filter on another brand: :class:`AccessDenied`), a cross-brand
  benchmark only where the policy offers one, at its coarse grain and a higher k;
- mode dp (the default): the epsilon is within the policy's floor and maximum, rounded up to whole
  micro-epsilon and charged to the tenant's AND the room's persisted budgets BEFORE any noisy value
  exists; cells are released on a noisy distinct-shopper count >= k (the existence delta is bounded
  by the policy and accounted); values are noisy; nothing exact is released about suppressed cells;
  a query that fails after its charge stays charged and is audited as failed;
- mode exact: trusted tenants only; cells with >= k DISTINCT shoppers; the combined remainder only when
  it has >= k too; refuses a release whose cell populations (rows, not just shoppers) differ from any
  earlier release of the room (any tenant's) by 1..k-1 shoppers;
- an identical repeated query (same data, same scope) gets the identical stored answer, charging
  nothing; every query is audited durably (accepted, refused, failed); refusal texts never state exact
  counts or sizes.

Loads are append-only batches, each file once (by sha256) and each ``event_id`` once; each row carries
its batch (the data version) and a row number, so an earlier release's populations can be recomputed
exactly for difference checks.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cleanroom.audit import QueryAudit
from cleanroom.dp import (
    MICRO,
    EpsilonLedger,
    existence_delta,
    laplace,
    min_count_epsilon,
    to_micro,
)
from cleanroom.errors import AccessDenied, CleanRoomError, PolicyViolation, QueryFailed
from cleanroom.history import Release, ReleaseHistory
from cleanroom.policy import CleanRoomPolicy, DPPolicy
from cleanroom.query import REST, CompiledQuery, Query, compile_query
from cleanroom.schema import EVENT_COLUMNS, EVENT_TYPES, INTEGER_METRICS, NUMERIC_COLUMNS

DP_REASON = "a cell is released only when its noisy count of distinct shoppers is at least k"


@dataclass(frozen=True)
class Querier:
    """Who asks: the tenant id and the brands whose rows it may see (None: every brand)."""

    tenant: str
    brands: frozenset[str] | None = None


@dataclass
class QueryResult:
    """What a query releases. ``suppressed_cells`` is None in mode dp (its exact value is data)."""

    cells: list[dict[str, Any]]
    suppressed_cells: int | None
    suppression_reason: str | None
    remainder: dict[str, Any] | None
    remainder_released: bool
    blocked_fields: list[str] = field(default_factory=list)
    epsilon_spent: float = 0.0  # by this call (0 for a stored answer)
    noisy: bool = False
    stored_answer: bool = False  # the identical query was answered before: the same answer again
    delta_spent: float = 0.0


@dataclass(frozen=True)
class LoadReport:
    """What one :meth:`CleanRoom.load_file` did."""

    file: str
    sha256: str
    batch: int
    rows: int
    duplicate_events: int = 0  # rows skipped: their event_id was loaded before
    already_loaded: bool = False  # the same file (by sha256) was loaded before: nothing done


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CleanRoom:
    """One retailer's events in a file-backed DuckDB database, queried under its policy.

    ``state``: path stem of the durable state (``<state>.epsilon.jsonl``, ``.releases.jsonl``,
    ``.audit.jsonl``); default the database path without its suffix. Keep it with the deployment's
    durable state: a room rebuilt over the same stem keeps its budgets and stored answers.
    ``noise_seed``: simulated (seeded) noise, for synthetic markets only."""

    def __init__(
        self,
        db_path: Path | str,
        policy: CleanRoomPolicy,
        audit_path: Path | str | None = None,
        state: Path | str | None = None,
        noise_seed: int | None = None,
    ) -> None:
        import duckdb

        self.policy = policy
        db = Path(db_path)
        stem = str(state) if state is not None else str(db.with_suffix(""))
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        self.history = ReleaseHistory(Path(stem + ".releases.jsonl"))
        self.audit = QueryAudit(audit_path or stem + ".audit.jsonl")
        self.ledger = EpsilonLedger(Path(stem + ".epsilon.jsonl"), policy.dp.budget_refresh_days)
        self.noise_seed = noise_seed
        try:
            self._con = duckdb.connect(str(db_path))
        except duckdb.IOException as e:
            raise CleanRoomError(
                f"cannot open {db_path}: {e} (is a server using it? DuckDB allows one process)"
            ) from e
        self._lock = threading.Lock()
        cols = ", ".join(f'"{c}" {t}' for c, t in EVENT_COLUMNS.items())
        self._con.execute(
            f'CREATE TABLE IF NOT EXISTS events ({cols}, "_batch" INTEGER NOT NULL, "_row" BIGINT, '
            '"event_id" VARCHAR)'
        )
        for col, typ in (("_batch", "INTEGER DEFAULT 0"), ("_row", "BIGINT"), ("event_id", "VARCHAR")):
            self._con.execute(f'ALTER TABLE events ADD COLUMN IF NOT EXISTS "{col}" {typ}')
        self._con.execute('UPDATE events SET "_row" = rowid + 1 WHERE "_row" IS NULL')
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS _loads (batch INTEGER, sha256 VARCHAR, file VARCHAR, rows BIGINT)"
        )
        row = self._con.execute('SELECT COALESCE(MAX("_batch"), 0) FROM events').fetchone()
        self.version = int(row[0]) if row else 0
        self.data_id = self._compute_data_id()

    # ---- data --------------------------------------------------------------------------------
    def _compute_data_id(self) -> str:
        """Identifies the data a query sees: the loaded files' hashes and the version (stored answers are
        keyed by it, so new data never gets an old answer). Kept in ``data_id``, renewed by each load."""
        loads = self._con.execute("SELECT batch, sha256 FROM _loads ORDER BY batch").fetchall()
        text = "|".join(f"{b}:{h}" for b, h in loads) + f"|v{self.version}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def load(self, path: Path | str, mapping: dict[str, str] | None = None) -> int:
        """:meth:`load_file`, returning the number of rows loaded (0 for a file loaded before)."""
        return self.load_file(path, mapping).rows

    def load_file(self, path: Path | str, mapping: dict[str, str] | None = None) -> LoadReport:
        """Append a CSV or Parquet file in the documented schema as a new batch. ``mapping`` renames the
        file's columns (native -> schema; see ``planning.harmonize``); other columns are
        ignored, except an optional ``event_id`` (rows whose id was loaded before are skipped). A file
        loaded before (same sha256) loads nothing. Refuses the whole file (loading nothing), naming the
        first bad row (1-based, header excluded): missing columns, blank shopper or event ids, unknown
        event types, NaN, infinite, negative or out-of-bound numbers (the policy's ``value_bounds``)."""
        path = Path(path)
        reader = {".csv": "read_csv_auto", ".parquet": "read_parquet"}.get(path.suffix)
        if reader is None:
            raise CleanRoomError(f"{path.name}: expected a .csv or .parquet file")
        if not path.is_file():
            raise CleanRoomError(f"{path}: no such file")
        digest = _sha256(path)
        with self._lock:
            seen = self._con.execute("SELECT batch FROM _loads WHERE sha256 = ?", [digest]).fetchone()
            if seen:
                return LoadReport(path.name, digest, int(seen[0]), 0, already_loaded=True)
            try:
                probe = self._con.execute(f"SELECT * FROM {reader}(?) LIMIT 0", [str(path)])
            except Exception as e:
                raise CleanRoomError(f"{path.name}: cannot read it: {e}") from e
            source = {(mapping or {}).get(d[0], d[0]): d[0] for d in probe.description}  # schema -> file
            missing = sorted(set(EVENT_COLUMNS) - set(source))
            if missing:
                raise CleanRoomError(f"{path.name}: missing columns {missing}")
            batch = self.version + 1
            row = self._con.execute('SELECT COALESCE(MAX("_row"), 0) FROM events').fetchone()
            base = int(row[0]) if row else 0
            cols = ", ".join(_quote(source[c]) + f' AS "{c}"' for c in EVENT_COLUMNS)
            eid = "CAST(" + _quote(source["event_id"]) + " AS VARCHAR)" if "event_id" in source else "NULL"
            casts = ", ".join(f'CAST("{c}" AS {t})' for c, t in EVENT_COLUMNS.items())
            self._con.execute("BEGIN TRANSACTION")
            try:
                self._con.execute(
                    f"INSERT INTO events SELECT {casts}, ?, ? + row_number() OVER (), __eid "
                    f"FROM (SELECT {cols}, {eid} AS __eid FROM {reader}(?))",
                    [batch, base, str(path)],
                )
                self._check_batch(path.name, batch, base, "event_id" in source)
                dup = self._drop_duplicate_events(batch) if "event_id" in source else 0
                n = self._con.execute('SELECT COUNT(*) FROM events WHERE "_batch" = ?', [batch]).fetchone()
                rows = int(n[0]) if n else 0
                self._con.execute("INSERT INTO _loads VALUES (?, ?, ?, ?)", [batch, digest, path.name, rows])
            except Exception as e:
                self._con.execute("ROLLBACK")
                if isinstance(e, CleanRoomError):
                    raise
                raise CleanRoomError(f"{path.name}: {e}") from e
            self._con.execute("COMMIT")
            self.version = batch
            self.data_id = self._compute_data_id()
            return LoadReport(path.name, digest, batch, rows, dup)

    def _check_batch(self, name: str, batch: int, base: int, has_event_id: bool) -> None:
        types = ", ".join(f"'{t}'" for t in EVENT_TYPES)
        checks = [
            ('"shopper_id" IS NULL OR trim("shopper_id") = \'\'', "shopper_id is blank"),
            (
                f'"event_type" IS NULL OR "event_type" NOT IN ({types})',
                f"event_type is not one of {list(EVENT_TYPES)}",
            ),
            ('"event_date" IS NULL', "event_date is missing"),
        ]
        if has_event_id:
            checks.append(('"event_id" IS NULL OR trim("event_id") = \'\'', "event_id is blank"))
        for c in NUMERIC_COLUMNS:
            checks.append((f'isnan("{c}") OR isinf("{c}") OR "{c}" < 0', f"{c} is NaN, infinite or negative"))
            bound = self.policy.value_bounds.get(c)
            if bound is not None:
                checks.append((f'"{c}" > {float(bound)!r}', f"{c} is above the policy's bound {bound:g}"))
        for cond, what in checks:
            row = self._con.execute(
                f'SELECT COUNT(*), MIN("_row") FROM events WHERE "_batch" = ? AND ({cond})', [batch]
            ).fetchone()
            if row and row[0]:
                more = f" (and {row[0] - 1} more)" if row[0] > 1 else ""
                raise CleanRoomError(f"{name}: row {int(row[1]) - base}{more}: {what}; nothing loaded")

    def _drop_duplicate_events(self, batch: int) -> int:
        """Delete this batch's rows whose event_id is already loaded (or repeats within the batch)."""
        before = self._con.execute('SELECT COUNT(*) FROM events WHERE "_batch" = ?', [batch]).fetchone()
        self._con.execute(
            'DELETE FROM events WHERE "_batch" = ? AND ("event_id" IN (SELECT "event_id" FROM events '
            'WHERE "_batch" < ? AND "event_id" IS NOT NULL) OR "_row" NOT IN (SELECT MIN("_row") FROM events '
            'WHERE "_batch" = ? GROUP BY "event_id"))',
            [batch, batch, batch],
        )
        after = self._con.execute('SELECT COUNT(*) FROM events WHERE "_batch" = ?', [batch]).fetchone()
        return int(before[0] - after[0]) if before and after else 0

    def close(self) -> None:
        """Release the DuckDB file (another process may open it then)."""
        self._con.close()

    # ---- budgets -----------------------------------------------------------------------------
    def budget(self, tenant: str) -> dict[str, Any]:
        """``tenant``'s and the room's differential-privacy budgets: total, spent, remaining (epsilon),
        delta spent, the per-query default, floor and maximum, and when the period ends."""
        dp, on = self.policy.dp, self.policy.dp_on
        spent, room, delta = self.ledger.spent(tenant)
        return {
            "retailer": self.policy.retailer,
            "tenant": tenant,
            "mode": self.policy.mode,
            "dp": on,
            "epsilon_budget": dp.epsilon_budget if on else None,
            "epsilon_spent": spent / MICRO,
            "epsilon_remaining": max(to_micro(dp.epsilon_budget) - spent, 0) / MICRO if on else None,
            "room_epsilon_budget": dp.room_epsilon_budget if on else None,
            "room_epsilon_spent": room / MICRO,
            "room_epsilon_remaining": max(to_micro(dp.room_epsilon_budget) - room, 0) / MICRO if on else None,
            "delta_spent": delta,
            "epsilon_per_query": dp.epsilon_per_query if on else None,
            "min_epsilon_per_query": dp.min_epsilon_per_query if on else None,
            "max_epsilon_per_query": dp.max_epsilon_per_query if on else None,
            "period_ends": self.ledger.period_ends() if on else None,
        }

    # ---- queries -----------------------------------------------------------------------------
    def querier(self, tenant: str) -> Querier:
        """A local caller (CLI, tests) by tenant id, scoped by the policy alone (it must declare it)."""
        return Querier(tenant, self.policy.brand_scope(tenant))

    def query(self, who: Querier | str, q: Query) -> QueryResult:
        """Answer ``q`` for ``who`` under the policy (see the module contract)."""
        querier = who if isinstance(who, Querier) else self.querier(who)
        tenant, policy = querier.tenant, self.policy
        if policy.dp_on and q.epsilon is None:
            q = q.model_copy(update={"epsilon": policy.dp.epsilon_per_query})
        scope = "*" if querier.brands is None else ",".join(sorted(querier.brands))
        with self._lock:
            key = f"{self.data_id}|{scope}|{q.model_dump_json()}"
            cached = self.history.cached(tenant, key)
            if cached is not None:
                result = QueryResult(
                    **{**cached, "epsilon_spent": 0.0, "delta_spent": 0.0, "stored_answer": True}
                )
                self._audit(
                    tenant, q, "accepted", result, reason="identical to an earlier query: stored answer"
                )
                return result
            charged: list[dict[str, Any]] = []
            try:
                if not policy.dp_on and tenant not in policy.trusted_tenants:
                    raise AccessDenied(
                        f"{policy.retailer}'s clean room answers exactly (no noise) for trusted partners only"
                    )
                c = compile_query(q, policy, self.version, querier.brands)
                k = policy.k * (
                    policy.benchmark.k_factor if q.scope == "benchmark" and policy.benchmark else 1
                )
                if policy.dp_on:
                    result, release = self._answer_dp(tenant, q, c, key, k, charged)
                else:
                    result, release = self._answer(c, key, q, k)
                    self._check_differences(c, release, k)
                _check_finite(result)
            except PolicyViolation as e:
                self._audit(tenant, q, "refused", None, reason=str(e))
                raise
            except Exception as e:
                eps = charged[0]["micro"] / MICRO if charged else 0.0
                why = f"query failed: {type(e).__name__}" + (
                    " (its epsilon stays charged)" if charged else ""
                )
                self._audit(tenant, q, "failed", None, reason=f"{why}: {e}"[:500], epsilon=eps)
                raise QueryFailed(why) from e
            self.history.remember(tenant, release, asdict(result))
            self._audit(tenant, q, "accepted", result, epsilon=result.epsilon_spent)
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
        self,
        tenant: str,
        q: Query,
        decision: str,
        result: QueryResult | None,
        reason: str = "",
        epsilon: float = 0.0,
    ) -> None:
        self.audit.record(
            retailer=self.policy.retailer,
            tenant=tenant,
            query=q.model_dump(mode="json"),
            decision=decision,
            reason=reason,
            mode=self.policy.mode,
            cells_released=len(result.cells) if result else 0,
            cells_suppressed=result.suppressed_cells if result else 0,
            epsilon_spent=epsilon,
            delta_spent=result.delta_spent if result and epsilon else 0.0,
        )

    def _cells(self, c: CompiledQuery) -> list[dict[str, Any]]:
        cur = self._con.cursor()
        rows = cur.execute(c.cells_sql, c.params).fetchmany(self.policy.max_groups + 1)
        if len(rows) > self.policy.max_groups:
            raise PolicyViolation(
                f"the query produces more cells than the policy's {self.policy.max_groups}: "
                "group by fewer dimensions or filter"
            )
        names = [d[0] for d in cur.description]
        out = [dict(zip(names, row, strict=True)) for row in rows]
        return sorted(out, key=lambda r: r["__ck"])  # a stable order (seeded noise is assigned by position)

    def _answer(self, c: CompiledQuery, key: str, q: Query, k: int) -> tuple[QueryResult, Release]:
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
            key, q.model_dump(mode="json"), self.version, sizes, c.where_sql, c.ck_sql, _jsonable(c.params)
        )
        return result, release

    def _check_differences(self, c: CompiledQuery, new: Release, k: int) -> None:
        """Refuse when a released cell's population (its rows' shoppers) differs from a cell of an
        earlier release of the room, whoever asked, by 1..k-1 shoppers. Only cells whose sizes are within
        k - 1 can (:meth:`ReleaseHistory.candidates`), and only pairs that share rows (cells sharing none
        differ by all their shoppers, >= k). One scan of ``events`` tags each row with its cell in both
        releases (cells not released fold into the remainder); the symmetric difference of a pair's rows
        is counted in distinct shoppers."""
        for old, new_keys, old_keys in self.history.candidates(new.cells, k):
            if (old.where_sql, old.ck_sql, old.params) == (new.where_sql, new.ck_sql, new.params):
                continue  # the same rows cell by cell (a repeat by another tenant): nothing differs
            ident = _quote(self.policy.identity_column)
            sql = (
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
            if self._con.cursor().execute(sql, params).fetchone():
                raise PolicyViolation(
                    f"refused: a released cell would differ from an earlier release of this clean room "
                    f"(any tenant's) by fewer than k={k} shoppers (differencing)"
                )

    def _answer_dp(
        self, tenant: str, q: Query, c: CompiledQuery, key: str, k: int, charged: list[dict[str, Any]]
    ) -> tuple[QueryResult, Release]:
        dp: DPPolicy = self.policy.dp
        asked = float(q.epsilon if q.epsilon is not None else dp.epsilon_per_query)
        if asked < dp.min_epsilon_per_query:
            raise PolicyViolation(
                f"epsilon {asked:g} is below the policy's floor {dp.min_epsilon_per_query:g} per query"
            )
        if asked > dp.max_epsilon_per_query:
            raise PolicyViolation(
                f"epsilon {asked:g} is above the policy's {dp.max_epsilon_per_query:g} per query"
            )
        micro = to_micro(asked)
        epsilon = micro / MICRO
        L = dp.max_cells_per_shopper
        eps_count = epsilon * dp.count_share
        eps_metric = epsilon * (1 - dp.count_share) / len(c.metrics)
        delta = existence_delta(k, L, eps_count) if c.dimensions else 0.0
        if delta > dp.max_delta_per_query:
            need = min_count_epsilon(k, L, dp.max_delta_per_query) / dp.count_share
            hint = (
                f"ask for at least epsilon={math.ceil(need * 1000) / 1000:g}"
                if need <= dp.max_epsilon_per_query
                else "this policy cannot release grouped cells at this k; query without dimensions"
            )
            raise PolicyViolation(
                f"epsilon {asked:g} is too small to decide which cells exist within the policy's delta "
                f"{dp.max_delta_per_query:g} per query: {hint}"
            )
        rows = self._cells(c)  # exact values exist only in memory here; nothing noisy yet
        budgets = (to_micro(dp.epsilon_budget), to_micro(dp.room_epsilon_budget))
        charged.append(self.ledger.charge(tenant, micro, delta, budgets, key))
        seed = None
        if self.noise_seed is not None:  # simulated noise (synthetic markets): reproducible per query
            seed = int(hashlib.sha256(f"{self.noise_seed}|{key}".encode()).hexdigest()[:16], 16)
        noisy_n, spent = laplace([r["__n"] for r in rows], L, eps_count, seed)
        noisy: dict[str, list[float]] = {}
        for i, m in enumerate(c.metrics):
            noisy[m], eps = laplace(
                [r[m] for r in rows],
                L * dp.metric_bounds[m],
                eps_metric,
                None if seed is None else seed + i + 1,
            )
            spent += eps
        cells = []
        for i, rec in enumerate(rows):
            if noisy_n[i] < k:
                continue
            out = {d: rec[d] for d in c.dimensions}
            for m in c.metrics:
                v = max(noisy[m][i], 0.0)
                out[m] = round(v) if m in INTEGER_METRICS else round(v, 2)
            cells.append(out)
        if spent > epsilon * (1 + 1e-9):  # OpenDP's map agrees with our split, or we refuse to release
            raise RuntimeError(f"privacy map {spent} exceeds the charge {epsilon}")
        result = QueryResult(
            cells,
            None,
            DP_REASON,
            None,
            False,
            c.blocked_fields,
            epsilon_spent=epsilon,
            noisy=True,
            delta_spent=delta,
        )
        release = Release(
            key, q.model_dump(mode="json"), self.version, {}, c.where_sql, c.ck_sql, _jsonable(c.params)
        )
        return result, release


def _check_finite(result: QueryResult) -> None:
    """No released number may be NaN or infinite (it would not be JSON, and it means broken data)."""
    for cell in [*result.cells, result.remainder or {}]:
        for v in cell.values():
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError("a released value is not finite")


def _quote(name: str) -> str:
    """A column name of the loaded file as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _jsonable(params: list[object]) -> list[object]:
    """Query parameters as stored in the release history (dates as ISO strings; DuckDB casts them back)."""
    return [p if isinstance(p, str | int | float) else str(p) for p in params]
