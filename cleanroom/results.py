"""What the clean room's front takes and gives: who asks, what a query releases, what a load did."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


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
    truncated: bool = False  # mode dp: more cells passed the noisy threshold than max_groups; the top ones

    def check_finite(self) -> None:
        """Raise ValueError when a released number is NaN or infinite (not JSON; it means broken data)."""
        for cell in [*self.cells, self.remainder or {}]:
            for v in cell.values():
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError("a released value is not finite")


@dataclass(frozen=True)
class LoadReport:
    """What one :meth:`cleanroom.room.CleanRoom.load_file` did."""

    file: str
    sha256: str
    batch: int
    rows: int
    duplicate_events: int = 0  # rows skipped: their event_id was loaded before
    already_loaded: bool = False  # the same file (by sha256) was loaded before: nothing done


def jsonable(params: list[object]) -> list[object]:
    """Query parameters as stored in the release history (dates as ISO strings; DuckDB casts them back)."""
    return [p if isinstance(p, str | int | float) else str(p) for p in params]
