"""Parquet files queried where they lie (a directory, a glob or an object-store prefix, partitioned by date or
not) instead of being copied into the room's DuckDB file.

Contract: :func:`resolve` lists a source's ``.parquet`` files (sorted, ``hive``-style ``event_date=…``
folders allowed); :func:`fingerprint` hashes each file's bytes (sha256, streamed) and takes its stamp (size and
modification time, or the object store's ETag); the room records both per batch, so a data version names the
exact bytes it covered. :func:`select_sql` is the rows of one attached batch in the event schema, as
:class:`cleanroom.store.EventStore` puts them beside the loaded rows. Object stores are read through fsspec
(``storage_options`` as for the adapter registry; credentials from the environment as s3fs reads them),
registered with DuckDB, so no DuckDB extension is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cleanroom.errors import CleanRoomError
from cleanroom.schema import EVENT_COLUMNS, quote


@dataclass(frozen=True)
class AttachedFile:
    """One attached file as recorded: its batch, URL, sha256 and stamp."""

    batch: int
    url: str
    sha256: str
    stamp: str


def protocol(url: str) -> str:
    """``s3`` for ``s3://bucket/key``; ``file`` for a local path."""
    return url.split("://", 1)[0] if "://" in url else "file"


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The fsspec filesystem of ``url`` (local paths: the local one)."""
    import fsspec

    proto = protocol(url)
    return fsspec.filesystem(proto, **(storage_options or {}) if proto != "file" else {})


def _with_protocol(fs: Any, path: str, url: str) -> str:
    proto = protocol(url)
    return path if proto == "file" else f"{proto}://{path}"


def resolve(source: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The ``.parquet`` files of ``source`` (a file, a folder searched recursively, or a glob), sorted;
    CleanRoomError when there are none."""
    fs = filesystem(source, storage_options)
    try:
        if any(ch in source for ch in "*?["):
            found = fs.glob(source)
        elif fs.isdir(source):
            found = fs.find(source)
        else:
            found = [source] if fs.exists(source) else []
    except OSError as e:
        raise CleanRoomError(f"{source}: cannot list it: {e}") from e
    files = sorted(_with_protocol(fs, p, source) for p in found if str(p).endswith(".parquet"))
    if not files:
        raise CleanRoomError(f"{source}: no .parquet file there")
    return files


def stamp(fs: Any, url: str) -> str:
    """What changes when a file's bytes change, read without reading them: size and ETag or mtime."""
    info = fs.info(url)
    mark = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return f"{info.get('size')}:{mark}"


def fingerprint(fs: Any, url: str, progress: Any = None) -> tuple[str, str]:
    """(sha256 of the file's bytes, its stamp); ``progress.update(n)`` per chunk when given."""
    h = hashlib.sha256()
    with fs.open(url, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            h.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest(), stamp(fs, url)


def digest(files: list[tuple[str, str]]) -> str:
    """One sha256 for a set of (url, sha256): the batch's identity (same files, same bytes: same digest)."""
    return hashlib.sha256(json.dumps(sorted(h for _, h in files)).encode()).hexdigest()


def reader(urls: list[str], extra: str = "") -> str:
    """``read_parquet`` over ``urls`` (hive partitions read as columns; files may differ in columns)."""
    listed = ", ".join("'" + u.replace("'", "''") + "'" for u in urls)
    return f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true{extra})"


def select_sql(urls: list[str], source: dict[str, str], batch: int, extra: str = "") -> str:
    """The rows of one attached batch in the event schema (``source``: schema column -> file column), with
    ``_batch``, no ``_row`` and the optional ``event_id``; ``extra``: more read_parquet options."""
    cols = [f'CAST({quote(source[c])} AS {t}) AS "{c}"' for c, t in EVENT_COLUMNS.items()]
    eid = "CAST(" + quote(source["event_id"]) + " AS VARCHAR)" if "event_id" in source else "NULL::VARCHAR"
    return (
        f'SELECT {", ".join(cols)}, {int(batch)} AS "_batch", NULL::BIGINT AS "_row", {eid} AS "event_id"'
        f"{', filename, file_row_number' if extra else ''} FROM {reader(urls, extra)}"
    )
