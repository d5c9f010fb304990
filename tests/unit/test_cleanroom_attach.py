"""Parquet files read in place (issue #27 item 4): partitioned by date, local or on an S3-compatible store
(moto), answers equal to the same data copied in, nothing copied, each file's bytes pinned by sha256."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pytest

from cleanroom import CleanRoom, CleanRoomError, DataChanged, PolicyViolation, Query
from cleanroom import store as store_module
from tests.cleanroom_data import exact_policy, write_events

K = 5
QUERIES = [
    Query(dimensions=["sku"], metrics=["purchases", "revenue"]),
    Query(dimensions=["event_date"], metrics=["revenue"]),
    Query(metrics=["units", "revenue"], date_from="2026-01-05"),
]


def partitioned(csv: Path, out: Path) -> Path:
    """``csv`` rewritten as Parquet partitioned by day (``event_date=…/data_0.parquet``), as a retailer's
    export lands."""
    duckdb.execute(
        f"COPY (SELECT * REPLACE (CAST(event_date AS DATE) AS event_date) FROM read_csv_auto('{csv}')) "
        f"TO '{out}' (FORMAT parquet, PARTITION_BY (event_date))"
    )
    return out


def spread_days(csv: Path) -> Path:
    """The test events over three days (so the partitions are three)."""
    lines = csv.read_text().splitlines()
    days = ["2026-01-04", "2026-01-05", "2026-01-06"]
    body = [ln.replace("2026-01-05", days[i % 3], 1) for i, ln in enumerate(lines[1:])]
    csv.write_text("\n".join([lines[0], *body]) + "\n")
    return csv


def answers(room: CleanRoom, tenant: str) -> list[Any]:
    out = []
    for q in QUERIES:
        r = room.query(tenant, q)
        out.append((sorted(json.dumps(c, default=str, sort_keys=True) for c in r.cells), r.remainder))
    return out


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    csv = spread_days(write_events(tmp_path / "events.csv", K))
    return csv, partitioned(csv, tmp_path / "export")


def test_partitioned_parquet_is_read_in_place_with_the_answers_of_a_copy(
    tmp_path: Path, data: tuple[Path, Path]
) -> None:
    csv, export = data
    copied = CleanRoom(tmp_path / "copied.duckdb", exact_policy(k=K))
    copied.load(csv)
    room = CleanRoom(tmp_path / "acme.duckdb", exact_policy(k=K, attach_files=True))
    report = room.attach(str(export))
    assert report.rows == copied.store.con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert room.store.con.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)  # nothing copied
    assert answers(room, "brand_x") == answers(copied, "brand_y")
    # reopened (a restart): the same data version, the same answers (stored ones, keyed by it)
    version = room.version
    room.close()
    again = CleanRoom(tmp_path / "acme.duckdb", exact_policy(k=K, attach_files=True))
    assert again.version == version and again.attach(str(export)).already_loaded
    assert answers(again, "brand_x") == answers(copied, "brand_y")


def test_a_new_day_is_attached_as_a_new_version(tmp_path: Path, data: tuple[Path, Path]) -> None:
    _, export = data
    room = CleanRoom(tmp_path / "acme.duckdb", exact_policy(k=K, attach_files=True))
    first = room.attach(str(export))
    day = export / "event_date=2026-01-07"
    day.mkdir()
    duckdb.execute(
        f"COPY (SELECT * EXCLUDE (event_date) FROM read_parquet('{export}/event_date=2026-01-04/*.parquet')) "
        f"TO '{day}/data_0.parquet' (FORMAT parquet)"
    )
    second = room.attach(str(export))  # the folder again: only its new file
    assert second.batch == first.batch + 1 and 0 < second.rows < first.rows
    total = room.store.con.execute("SELECT COUNT(*) FROM room_events").fetchone()
    assert total == (first.rows + second.rows,)


def test_a_file_changed_after_attaching_stops_the_answers(tmp_path: Path, data: tuple[Path, Path]) -> None:
    _, export = data
    room = CleanRoom(tmp_path / "acme.duckdb", exact_policy(k=K, attach_files=True))
    room.attach(str(export))
    room.query("brand_x", QUERIES[0])
    victim = next(export.glob("event_date=2026-01-05/*.parquet"))
    duckdb.execute(  # the same rows with one revenue doubled: same shape, other bytes
        f"COPY (SELECT * EXCLUDE (event_date) REPLACE (revenue * 2 AS revenue) FROM read_parquet('{victim}')) "
        f"TO '{victim}.new' (FORMAT parquet)"
    )
    os.replace(f"{victim}.new", victim)
    room.store._verified_at = 0.0  # stamps are compared at most every VERIFY_EVERY_S
    with pytest.raises(DataChanged, match="no longer holds the bytes"):
        room.query("brand_x", QUERIES[1])
    assert room.audit.entries()[-1]["decision"] == "failed"
    room.close()
    reopened = CleanRoom(tmp_path / "acme.duckdb", exact_policy(k=K, attach_files=True))  # opens...
    with pytest.raises(DataChanged):  # ...but answers nothing
        reopened.query("brand_x", QUERIES[1])


def test_attaching_needs_the_policy_and_clean_files(
    tmp_path: Path, data: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, export = data
    with pytest.raises(PolicyViolation, match="attach_files"):
        CleanRoom(tmp_path / "off.duckdb", exact_policy(k=K)).attach(str(export))
    room = CleanRoom(tmp_path / "acme.duckdb", exact_policy(k=K, attach_files=True))
    with pytest.raises(CleanRoomError, match=r"no \.parquet file"):
        room.attach(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad"
    bad.mkdir()
    duckdb.execute(
        f"COPY (SELECT * REPLACE (CASE WHEN sku = 'at_k' THEN ' ' ELSE shopper_id END AS shopper_id) "
        f"FROM read_csv_auto('{csv}')) TO '{bad}/part.parquet' (FORMAT parquet)"
    )
    with pytest.raises(CleanRoomError, match=r"part\.parquet row \d+ \(and \d+ more\): shopper_id is blank"):
        room.attach(str(bad))
    assert room.version == 0  # nothing attached
    ids = tmp_path / "ids"
    ids.mkdir()
    duckdb.execute(
        f"COPY (SELECT *, 'e' || (row_number() OVER () % 3) AS event_id FROM read_csv_auto('{csv}')) TO '{ids}/p.parquet' "
        "(FORMAT parquet)"
    )
    with pytest.raises(CleanRoomError, match="event ids repeat"):
        room.attach(str(ids))
    with pytest.raises(CleanRoomError, match="memory_limit"):
        CleanRoom(tmp_path / "m.duckdb", exact_policy(k=K), memory_limit="lots")


def test_attached_from_an_object_store(tmp_path: Path, data: tuple[Path, Path], s3: Any) -> None:
    """The same export uploaded to S3 (moto over HTTP, read by s3fs through DuckDB; no DuckDB extension)."""
    import fsspec

    csv, export = data
    bucket = s3.make_bucket("acme-logs")
    fs = fsspec.filesystem("s3", **s3.options())
    fs.put(str(export), "acme-logs/events", recursive=True)
    copied = CleanRoom(tmp_path / "copied.duckdb", exact_policy(k=K))
    copied.load(csv)
    room = CleanRoom(
        tmp_path / "acme.duckdb", exact_policy(k=K, attach_files=True), storage_options=s3.options()
    )
    report = room.attach(f"{bucket}/events")
    assert report.rows > 0 and answers(room, "brand_x") == answers(copied, "brand_y")
    room.close()
    reopened = CleanRoom(
        tmp_path / "acme.duckdb", exact_policy(k=K, attach_files=True), storage_options=s3.options()
    )
    assert answers(reopened, "brand_x") == answers(copied, "brand_y")
    assert store_module.VERIFY_EVERY_S > 0
