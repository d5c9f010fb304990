"""Training corpora on disk: JSONL, one ``{"prompt": str, "response": str}`` object per line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from adapters.errors import InvalidAdapter


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Read a corpus; raises InvalidAdapter naming the file and line of the first bad record."""
    if not path.is_file():
        raise InvalidAdapter(f"corpus {path} does not exist")
    return parse_pairs(path.read_text(), str(path))


def parse_pairs(text: str, source: str = "data", max_records: int | None = None) -> list[tuple[str, str]]:
    """Parse JSONL corpus text (``source`` names it in errors); at least 10 records, at most
    ``max_records``; raises InvalidAdapter naming the line of the first bad record."""
    pairs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidAdapter(f"{source}:{n}: not JSON ({e.msg})") from e
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("prompt"), str)
            or not isinstance(rec.get("response"), str)
        ):
            raise InvalidAdapter(f'{source}:{n}: expected {{"prompt": <string>, "response": <string>}}')
        pairs.append((rec["prompt"], rec["response"]))
        if max_records is not None and len(pairs) > max_records:
            raise InvalidAdapter(f"{source}: more than {max_records} records")
    if len(pairs) < 10:
        raise InvalidAdapter(f"{source}: need at least 10 records, got {len(pairs)}")
    return pairs


def write_pairs(path: Path, pairs: Iterable[tuple[str, str]]) -> Path:
    """Write a corpus (the inverse of :func:`read_pairs`)."""
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs))
    return path
