"""A retailer's events in one DuckDB file: the schema and its migration, append-only loads in batches.

Contract: :class:`EventStore` opens (or creates) the file and brings an older file's ``events`` table up to
the current schema (batch, row number, event id columns); :meth:`EventStore.load_file` appends a CSV or
Parquet file as a new batch — each file once (by sha256), each ``event_id`` once — or refuses the whole
file naming its first bad row; ``version`` is the last batch and ``data_id`` identifies the data a query
sees. Every row keeps its batch and row number, so an earlier release's populations can be recomputed.
Callers serialise access (:class:`cleanroom.room.CleanRoom` holds the lock).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import cleanroom.attached as attached
from cleanroom.errors import CleanRoomError, DataChanged, PolicyViolation
from cleanroom.query import EVENTS, CompiledQuery
from cleanroom.results import LoadReport
from cleanroom.schema import EVENT_COLUMNS, EVENT_TYPES, NUMERIC_COLUMNS, quote


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


VERIFY_EVERY_S = 10.0  # how often attached files' stamps are compared before a query


class EventStore:
    """The ``events`` table (loaded rows), the attached Parquet batches and the ``_loads`` record of one
    DuckDB file; queries read the view ``room_events`` (both together). ``storage_options``: fsspec options
    for attached object-store files; ``memory_limit``: DuckDB's (e.g. ``"4GB"``; it spills to disk beyond)."""

    def __init__(
        self,
        db_path: Path | str,
        storage_options: dict[str, Any] | None = None,
        memory_limit: str | None = None,
    ) -> None:
        import duckdb

        try:
            self.con = duckdb.connect(str(db_path))
        except duckdb.IOException as e:
            raise CleanRoomError(
                f"cannot open {db_path}: {e} (is a server using it? DuckDB allows one process)"
            ) from e
        # no extension is ever downloaded: object stores are read through fsspec (registered below)
        self.con.execute("SET autoinstall_known_extensions = false")
        self.con.execute("SET autoload_known_extensions = false")
        if memory_limit:
            try:
                self.con.execute("SET memory_limit = ?", [memory_limit])
            except duckdb.Error as e:
                raise CleanRoomError(f"memory_limit {memory_limit!r}: {e}") from e
        self.storage_options = dict(storage_options or {})
        self._registered: set[str] = set()
        self._verified_at = 0.0
        self._migrate()
        # the last batch ever recorded: a load whose rows were all duplicates keeps its batch number too, so a
        # version is never reused across restarts (a reused one would make two different data states look alike)
        row = self.con.execute(
            'SELECT GREATEST((SELECT COALESCE(MAX("_batch"), 0) FROM events), '
            "(SELECT COALESCE(MAX(batch), 0) FROM _loads))"
        ).fetchone()
        self.version = int(row[0]) if row else 0
        self.data_id = self._compute_data_id()
        self._build_view()  # attached files are verified before the first query (a changed one refuses queries)

    def _migrate(self) -> None:
        """Create the tables, or add the columns a file written by an older version lacks."""
        cols = ", ".join(f'"{c}" {t}' for c, t in EVENT_COLUMNS.items())
        self.con.execute(
            f'CREATE TABLE IF NOT EXISTS events ({cols}, "_batch" INTEGER NOT NULL, "_row" BIGINT, '
            '"event_id" VARCHAR)'
        )
        for col, typ in (("_batch", "INTEGER DEFAULT 0"), ("_row", "BIGINT"), ("event_id", "VARCHAR")):
            self.con.execute(f'ALTER TABLE events ADD COLUMN IF NOT EXISTS "{col}" {typ}')
        self.con.execute('UPDATE events SET "_row" = rowid + 1 WHERE "_row" IS NULL')
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS _loads (batch INTEGER, sha256 VARCHAR, file VARCHAR, rows BIGINT)"
        )
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS _attached (batch INTEGER, url VARCHAR, sha256 VARCHAR, stamp VARCHAR)"
        )
        self.con.execute("CREATE TABLE IF NOT EXISTS _attached_batches (batch INTEGER, columns VARCHAR)")

    def _attached_files(self) -> list[attached.AttachedFile]:
        rows = self.con.execute(
            "SELECT batch, url, sha256, stamp FROM _attached ORDER BY batch, url"
        ).fetchall()
        return [attached.AttachedFile(int(b), u, h, st) for b, u, h, st in rows]

    def _register(self, url: str) -> None:
        """Let DuckDB read ``url``'s object store through fsspec (once per protocol)."""
        proto = attached.protocol(url)
        if proto != "file" and proto not in self._registered:
            self.con.register_filesystem(attached.filesystem(url, self.storage_options))
            self._registered.add(proto)

    def _build_view(self) -> None:
        """``room_events``: the loaded rows and every attached batch, one relation."""
        selects = ['SELECT * FROM "events"']
        files = self._attached_files()
        for batch, columns in self.con.execute(
            "SELECT batch, columns FROM _attached_batches ORDER BY batch"
        ).fetchall():
            urls = [f.url for f in files if f.batch == batch]
            for u in urls:
                self._register(u)
            selects.append(attached.select_sql(urls, json.loads(columns), batch))
        self.con.execute(f"CREATE OR REPLACE VIEW {EVENTS} AS " + " UNION ALL BY NAME ".join(selects))

    def verify(self, force: bool = False) -> None:
        """Raise :class:`cleanroom.attached.DataChanged` when an attached file no longer holds the bytes it
        was attached with: stamps compared at most every ``VERIFY_EVERY_S`` (or now with ``force``), a file
        whose stamp moved is hashed again."""
        now = time.monotonic()
        if not force and now - self._verified_at < VERIFY_EVERY_S:
            return
        for f in self._attached_files():
            fs = attached.filesystem(f.url, self.storage_options)
            try:
                same = attached.stamp(fs, f.url) == f.stamp or attached.fingerprint(fs, f.url)[0] == f.sha256
            except OSError:
                same = False
            if not same:
                raise DataChanged(
                    f"attached file {f.url} (batch {f.batch}) is gone or no longer holds the bytes it was "
                    "attached with: restore it (the room answers nothing until then)"
                )
        self._verified_at = now

    def _compute_data_id(self) -> str:
        """Identifies the data a query sees: the loaded files' hashes and the version (stored answers are
        keyed by it, so new data never gets an old answer). Renewed by each load."""
        loads = self.con.execute("SELECT batch, sha256 FROM _loads ORDER BY batch").fetchall()
        text = "|".join(f"{b}:{h}" for b, h in loads) + f"|v{self.version}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def rows(self, sql: str, params: list[Any], limit: int) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(column names, at most ``limit`` rows) of a query."""
        cur = self.con.cursor()
        rows = cur.execute(sql, params).fetchmany(limit)
        return [d[0] for d in cur.description], rows

    def one(self, sql: str, params: list[Any]) -> dict[str, Any] | None:
        """The first row of a query as a dict (None when there is none)."""
        cur = self.con.cursor()
        row = cur.execute(sql, params).fetchone()
        return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None

    def cells(self, c: CompiledQuery, max_groups: int) -> list[dict[str, Any]]:
        """A compiled query's cells, exact (``__n`` distinct shoppers, ``__ck`` the cell key), in a stable
        order; PolicyViolation beyond the policy's ``max_groups``."""
        names, rows = self.rows(c.cells_sql, c.params, max_groups + 1)
        if len(rows) > max_groups:
            raise PolicyViolation(
                f"the query produces more cells than the policy's {max_groups}: "
                "group by fewer dimensions or filter"
            )
        out = [dict(zip(names, row, strict=True)) for row in rows]
        return sorted(out, key=lambda r: r["__ck"])  # a stable order (seeded noise is assigned by position)

    def close(self) -> None:
        """Release the DuckDB file (another process may open it then)."""
        self.con.close()

    def load_file(
        self, path: Path | str, mapping: dict[str, str] | None = None, bounds: dict[str, float] | None = None
    ) -> LoadReport:
        """Append a CSV or Parquet file in the documented schema as a new batch. ``mapping`` renames the
        file's columns (native -> schema; see ``planning.harmonize``); other columns are ignored, except an
        optional ``event_id`` (rows whose id was loaded before are skipped). A file loaded before (same
        sha256) loads nothing. Refuses the whole file (loading nothing), naming the first bad row (1-based,
        header excluded): missing columns, blank shopper or event ids, unknown event types, NaN, infinite,
        negative or out-of-bound numbers (``bounds``: the policy's ``value_bounds``)."""
        path = Path(path)
        reader = {".csv": "read_csv_auto", ".parquet": "read_parquet"}.get(path.suffix)
        if reader is None:
            raise CleanRoomError(f"{path.name}: expected a .csv or .parquet file")
        if not path.is_file():
            raise CleanRoomError(f"{path}: no such file")
        digest = sha256_of(path)
        seen = self.con.execute("SELECT batch FROM _loads WHERE sha256 = ?", [digest]).fetchone()
        if seen:
            return LoadReport(path.name, digest, int(seen[0]), 0, already_loaded=True)
        source = self._columns(path.name, f"SELECT * FROM {reader}(?) LIMIT 0", [str(path)], mapping)
        batch = self.version + 1
        self.con.execute("BEGIN TRANSACTION")
        try:
            rows, dup = self._insert_batch(path, reader, source, batch, bounds or {})
            self.con.execute("INSERT INTO _loads VALUES (?, ?, ?, ?)", [batch, digest, path.name, rows])
        except Exception as e:
            self.con.execute("ROLLBACK")
            if isinstance(e, CleanRoomError):
                raise
            raise CleanRoomError(f"{path.name}: {e}") from e
        self.con.execute("COMMIT")
        self.version = batch
        self.data_id = self._compute_data_id()
        return LoadReport(path.name, digest, batch, rows, dup)

    def _columns(
        self, name: str, probe_sql: str, params: list[Any], mapping: dict[str, str] | None
    ) -> dict[str, str]:
        """Schema column -> the file's column (``mapping`` renames native names); CleanRoomError naming ``name``
        when the file cannot be read or lacks a schema column."""
        try:
            probe = self.con.execute(probe_sql, params)
        except Exception as e:
            raise CleanRoomError(f"{name}: cannot read it: {e}") from e
        cols = {(mapping or {}).get(d[0], d[0]): d[0] for d in probe.description}
        missing = sorted(set(EVENT_COLUMNS) - set(cols))
        if missing:
            raise CleanRoomError(f"{name}: missing columns {missing}")
        return cols

    def _insert_batch(
        self, path: Path, reader: str, source: dict[str, str], batch: int, bounds: dict[str, float]
    ) -> tuple[int, int]:
        """Insert the file's rows as ``batch``, check them, drop repeated event ids: (rows kept, dropped)."""
        row = self.con.execute('SELECT COALESCE(MAX("_row"), 0) FROM events').fetchone()
        base = int(row[0]) if row else 0
        cols = ", ".join(quote(source[c]) + f' AS "{c}"' for c in EVENT_COLUMNS)
        eid = "CAST(" + quote(source["event_id"]) + " AS VARCHAR)" if "event_id" in source else "NULL"
        casts = ", ".join(f'CAST("{c}" AS {t})' for c, t in EVENT_COLUMNS.items())
        self.con.execute(
            f"INSERT INTO events SELECT {casts}, ?, ? + row_number() OVER (), __eid "
            f"FROM (SELECT {cols}, {eid} AS __eid FROM {reader}(?))",
            [batch, base, str(path)],
        )
        self._check_batch(path.name, batch, base, "event_id" in source, bounds)
        dup = self._drop_duplicate_events(batch) if "event_id" in source else 0
        n = self.con.execute('SELECT COUNT(*) FROM events WHERE "_batch" = ?', [batch]).fetchone()
        return (int(n[0]) if n else 0), dup

    def _check_batch(
        self, name: str, batch: int, base: int, has_event_id: bool, bounds: dict[str, float]
    ) -> None:
        relation = f'(SELECT * FROM "events" WHERE "_batch" = {int(batch)})'
        self._check_rows(
            name, relation, has_event_id, bounds, f"'row ' || (\"_row\" - {int(base)})", '"_row"'
        )

    def _check_rows(
        self, name: str, relation: str, has_event_id: bool, bounds: dict[str, float], locate: str, order: str
    ) -> None:
        """CleanRoomError naming the first bad row of ``relation`` (``locate``: SQL text saying where it is,
        the first by ``order``) and how many more there are."""
        types = ", ".join(f"'{t}'" for t in EVENT_TYPES)
        checks = [
            (_blank("shopper_id"), "shopper_id is blank"),
            (
                f'"event_type" IS NULL OR "event_type" NOT IN ({types})',
                f"event_type is not one of {list(EVENT_TYPES)}",
            ),
            ('"event_date" IS NULL', "event_date is missing"),
        ]
        if has_event_id:
            checks.append((_blank("event_id"), "event_id is blank"))
        for c in NUMERIC_COLUMNS:
            checks.append((f'isnan("{c}") OR isinf("{c}") OR "{c}" < 0', f"{c} is NaN, infinite or negative"))
            bound = bounds.get(c)
            if bound is not None:
                checks.append((f'"{c}" > {float(bound)!r}', f"{c} is above the policy's bound {bound:g}"))
        parts = [
            f"COUNT(*) FILTER (WHERE {c}), arg_min({locate}, {order}) FILTER (WHERE {c})" for c, _ in checks
        ]
        row = self.con.execute(f"SELECT {', '.join(parts)} FROM {relation}").fetchone()  # one scan
        for i, (_, what) in enumerate(checks):
            n, where = (row[2 * i], row[2 * i + 1]) if row else (0, None)
            if n:
                more = f" (and {n - 1} more)" if n > 1 else ""
                raise CleanRoomError(f"{name}: {where}{more}: {what}; nothing loaded")

    def attach(
        self,
        source: str,
        mapping: dict[str, str] | None = None,
        bounds: dict[str, float] | None = None,
        progress: bool = False,
    ) -> LoadReport:
        """Add the Parquet files of ``source`` (a file, a folder, a glob; local or an object store) as a new
        batch read in place: each file hashed (sha256) and stamped, the rows checked as :meth:`load_file`
        checks them, none copied. Files attached before are skipped (a folder attached again adds its new
        files: the day that landed since), so are bytes attached before under other names; event ids already
        in the room or repeated refuse the whole set (attached rows cannot be dropped one by one)."""
        known = {f.url for f in self._attached_files()}
        listed = attached.resolve(source, self.storage_options)
        urls = [u for u in listed if u not in known]  # a folder attached again: its new files only
        if not urls:
            return LoadReport(source, "", self.version, 0, already_loaded=True)
        fs = attached.filesystem(source, self.storage_options)
        bar = _bytes_bar(fs, urls, source) if progress else None
        try:
            prints = [(u, *attached.fingerprint(fs, u, bar)) for u in urls]
        except OSError as e:
            raise CleanRoomError(f"{source}: cannot read it: {e}") from e
        finally:
            if bar is not None:
                bar.close()
        digest = attached.digest([(u, h) for u, h, _ in prints])
        seen = self.con.execute("SELECT batch FROM _loads WHERE sha256 = ?", [digest]).fetchone()
        if seen:
            return LoadReport(source, digest, int(seen[0]), 0, already_loaded=True)
        self._register(source)
        cols = self._columns(source, f"SELECT * FROM {attached.reader(urls)} LIMIT 0", [], mapping)
        batch = self.version + 1
        rows = "(" + attached.select_sql(urls, cols, batch, ", filename = true, file_row_number = true") + ")"
        locate = "filename || ' row ' || (file_row_number + 1)"
        self._check_rows(
            source, rows, "event_id" in cols, bounds or {}, locate, "(filename, file_row_number)"
        )
        if "event_id" in cols:
            self._refuse_repeated_events(source, rows)
        n = self.con.execute(f"SELECT COUNT(*) FROM {rows}").fetchone()
        self.con.execute("BEGIN TRANSACTION")
        self.con.execute("INSERT INTO _loads VALUES (?, ?, ?, ?)", [batch, digest, source, n[0] if n else 0])
        self.con.executemany(
            "INSERT INTO _attached VALUES (?, ?, ?, ?)", [[batch, u, h, st] for u, h, st in prints]
        )
        self.con.execute("INSERT INTO _attached_batches VALUES (?, ?)", [batch, json.dumps(cols)])
        self.con.execute("COMMIT")
        self.version = batch
        self.data_id = self._compute_data_id()
        self._build_view()
        return LoadReport(source, digest, batch, int(n[0]) if n else 0)

    def _refuse_repeated_events(self, source: str, rows: str) -> None:
        row = self.con.execute(
            f'SELECT COUNT(*) FROM (SELECT "event_id" FROM {rows} GROUP BY "event_id" HAVING COUNT(*) > 1 '
            f'UNION ALL SELECT "event_id" FROM {rows} WHERE "event_id" IN '
            f'(SELECT "event_id" FROM {EVENTS} WHERE "event_id" IS NOT NULL))'
        ).fetchone()
        if row and row[0]:
            raise CleanRoomError(
                f"{source}: event ids repeat (within the files or with rows already in the room); attached "
                "files are read as they are, so load them instead (`rmn cleanroom load` skips repeats)"
            )

    def _drop_duplicate_events(self, batch: int) -> int:
        """Delete this batch's rows whose event_id is already loaded (or repeats within the batch)."""
        before = self.con.execute('SELECT COUNT(*) FROM events WHERE "_batch" = ?', [batch]).fetchone()
        self.con.execute(
            f'DELETE FROM events WHERE "_batch" = ? AND ("event_id" IN (SELECT "event_id" FROM {EVENTS} '
            'WHERE "_batch" < ? AND "event_id" IS NOT NULL) OR "_row" NOT IN (SELECT MIN("_row") FROM events '
            'WHERE "_batch" = ? GROUP BY "event_id"))',
            [batch, batch, batch],
        )
        after = self.con.execute('SELECT COUNT(*) FROM events WHERE "_batch" = ?', [batch]).fetchone()
        return int(before[0] - after[0]) if before and after else 0


def _bytes_bar(fs: Any, urls: list[str], source: str) -> Any:
    """A progress bar over the bytes of ``urls`` (on stderr)."""
    from tqdm import tqdm

    total = sum(int(fs.info(u).get("size") or 0) for u in urls)
    return tqdm(total=total, unit="B", unit_scale=True, desc=f"hash {source}")


def _blank(column: str) -> str:
    """SQL: ``column`` is NULL or only whitespace (spaces, tabs, line breaks, Unicode spaces), as Python's
    ``str.strip`` sees it: a tab-only id is no identity."""
    return f'"{column}" IS NULL OR regexp_full_match("{column}", \'[\\s\\p{{Z}}\\x0b\\x{{feff}}]*\')'
