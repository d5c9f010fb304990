"""Structured clean-room queries and their compilation to parameterised SQL.

Contract: :func:`compile_query` takes a validated :class:`Query` and a policy and returns SQL whose every
identifier comes from the schema's allowlist (never from the request) and whose every value is a bound
parameter, plus the requested fields the policy blocked (dropped and reported). It raises
:class:`PolicyViolation` for anything the policy forbids outright.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cleanroom.errors import PolicyViolation
from cleanroom.policy import CleanRoomPolicy
from cleanroom.schema import EVENT_COLUMNS, METRICS

_MAX_VALUE_LEN = 200
_MAX_VALUES = 100


class Filter(BaseModel):
    """``column op value``: eq (one string), in (a list of strings)."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(max_length=64)
    op: Literal["eq", "in"]
    value: str | list[str]

    @field_validator("value")
    @classmethod
    def _bounded(cls, v: str | list[str]) -> str | list[str]:
        values = v if isinstance(v, list) else [v]
        if len(values) > _MAX_VALUES:
            raise ValueError(f"at most {_MAX_VALUES} values")
        if any(len(x) > _MAX_VALUE_LEN for x in values):
            raise ValueError(f"values are at most {_MAX_VALUE_LEN} characters")
        return v


class Query(BaseModel):
    """What a tenant asks: group-by dimensions, metrics, filters, an inclusive date range."""

    model_config = ConfigDict(extra="forbid")

    dimensions: list[str] = Field(default_factory=list, max_length=5)
    metrics: list[str] = Field(min_length=1, max_length=10)
    filters: list[Filter] = Field(default_factory=list, max_length=10)
    date_from: dt.date | None = None
    date_to: dt.date | None = None


@dataclass(frozen=True)
class CompiledQuery:
    """SQL for the cells (with ``__n`` = distinct shoppers per cell) and for the suppressed remainder."""

    cells_sql: str
    remainder_sql: str
    populations_sql: str  # the shopper sets of released cells (k is the last parameter); never output
    remainder_population_sql: str
    params: list[object]
    dimensions: list[str]
    metrics: list[str]
    blocked_fields: list[str]


def _ident(name: str) -> str:
    """Quote a schema column (allowlisted; the request's string is never used)."""
    if name not in EVENT_COLUMNS:
        raise PolicyViolation(f"unknown field {name!r}")
    return '"' + name + '"'


def compile_query(q: Query, policy: CleanRoomPolicy) -> CompiledQuery:
    """Validate ``q`` against ``policy`` and compile it (see the module contract)."""
    sensitive = {policy.identity_column, *policy.blocked_fields}
    blocked = [d for d in q.dimensions if d in sensitive]
    dims = [d for d in q.dimensions if d not in sensitive]
    for d in dims:
        if d not in EVENT_COLUMNS:
            raise PolicyViolation(f"unknown dimension {d!r}")
        if d not in policy.allowed_dimensions:
            raise PolicyViolation(f"dimension {d!r} is not allowed by {policy.retailer}'s policy")
    if len(set(q.dimensions)) != len(q.dimensions):
        raise PolicyViolation("a dimension is listed twice")
    for m in q.metrics:
        if m not in METRICS or m not in policy.allowed_metrics:
            raise PolicyViolation(f"metric {m!r} is not allowed (allowed: {sorted(policy.allowed_metrics)})")
    where: list[str] = ["TRUE"]
    params: list[object] = []
    for f in q.filters:
        if f.column in sensitive:
            raise PolicyViolation(f"filtering on {f.column!r} is not allowed (identity or blocked field)")
        if f.op not in policy.filterable.get(f.column, []):
            raise PolicyViolation(f"filter {f.column} {f.op} is not allowed by {policy.retailer}'s policy")
        values = f.value if isinstance(f.value, list) else [f.value]
        if f.op == "eq" and len(values) != 1:
            raise PolicyViolation(f"filter {f.column} eq takes one value")
        where.append(f"{_ident(f.column)} IN ({', '.join('?' for _ in values)})")
        params.extend(values)
    if q.date_from is not None:
        where.append('"event_date" >= ?')
        params.append(q.date_from)
    if q.date_to is not None:
        where.append('"event_date" <= ?')
        params.append(q.date_to)
    if q.date_from and q.date_to and q.date_from > q.date_to:
        raise PolicyViolation("date_from is after date_to")
    ident = _ident(policy.identity_column)
    base = f"base AS (SELECT * FROM events WHERE {' AND '.join(where)})"
    dim_sql = [_ident(d) for d in dims]
    metric_sql = [f"{METRICS[m]} AS {_ident_alias(m)}" for m in q.metrics]
    group = f" GROUP BY {', '.join(dim_sql)}" if dims else ""
    cells_sql = (
        f"WITH {base} SELECT {', '.join([*dim_sql, *metric_sql])}, COUNT(DISTINCT {ident}) AS __n "
        f"FROM base{group}"
    )
    populations_sql = (
        f"WITH {base} SELECT LIST(DISTINCT {ident}) FROM base{group} HAVING COUNT(DISTINCT {ident}) >= ?"
    )
    remainder_sql = remainder_population_sql = ""
    if dims:
        join = " AND ".join(f"base.{d} IS NOT DISTINCT FROM small.{d}" for d in dim_sql)
        small = (
            f"WITH {base}, cells AS (SELECT {', '.join(dim_sql)}, COUNT(DISTINCT {ident}) AS __n FROM base{group}), "
            f"small AS (SELECT * FROM cells WHERE __n < ?) "
        )
        remainder_sql = f"{small}SELECT {', '.join(metric_sql)}, COUNT(DISTINCT base.{ident}) AS __n FROM base JOIN small ON {join}"
        remainder_population_sql = f"{small}SELECT LIST(DISTINCT base.{ident}) FROM base JOIN small ON {join}"
    return CompiledQuery(
        cells_sql,
        remainder_sql,
        populations_sql,
        remainder_population_sql,
        params,
        dims,
        list(q.metrics),
        blocked,
    )


def _ident_alias(metric: str) -> str:
    return '"' + metric + '"'  # metric names come from METRICS' keys (checked above)
