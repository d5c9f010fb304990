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

from cleanroom.errors import AccessDenied, PolicyViolation
from cleanroom.policy import CleanRoomPolicy
from cleanroom.schema import EVENT_COLUMNS, METRICS

_MAX_VALUE_LEN = 200
_MAX_VALUES = 100


def _utf8(values: list[str]) -> None:
    for x in values:
        try:
            x.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError("strings must be valid Unicode (no lone surrogates)") from e


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
        if not values:
            raise ValueError("an 'in' filter needs at least one value")
        if len(values) > _MAX_VALUES:
            raise ValueError(f"at most {_MAX_VALUES} values")
        if any(len(x) > _MAX_VALUE_LEN for x in values):
            raise ValueError(f"values are at most {_MAX_VALUE_LEN} characters")
        _utf8(values)
        return v

    @field_validator("column")
    @classmethod
    def _column_text(cls, v: str) -> str:
        _utf8([v])
        return v


class Query(BaseModel):
    """What a tenant asks: group-by dimensions, metrics, filters, an inclusive date range, the scope (its
    own brands' rows, or a cross-brand benchmark where the policy allows one) and, in mode dp, the epsilon
    to spend (default: the policy's per-query epsilon; within the policy's floor and maximum)."""

    model_config = ConfigDict(extra="forbid")

    dimensions: list[str] = Field(default_factory=list, max_length=5)
    metrics: list[str] = Field(min_length=1, max_length=10)
    filters: list[Filter] = Field(default_factory=list, max_length=10)
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    scope: Literal["own", "benchmark"] = "own"

    @field_validator("dimensions", "metrics")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if any(len(x) > 64 for x in v):
            raise ValueError("names are at most 64 characters")
        _utf8(v)
        return v


EVENTS = "room_events"  # the relation queries read: loaded rows and attached Parquet batches together
REST = "__rest__"  # cell key of the remainder (the suppressed cells combined)


@dataclass(frozen=True)
class CompiledQuery:
    """SQL over ``events`` restricted to data version ``<= ?`` (the last of ``params``).

    ``cells_sql`` yields the dimensions, the metrics, ``__n`` (distinct shoppers per cell; under DP after
    contribution bounding) and ``__ck`` (the cell's key); ``remainder_sql`` the metrics and ``__n`` of the
    cells below k combined (k is its last parameter); ``where_sql`` (over ``events``, with ``params``) and
    ``ck_sql`` (a row's cell key) define each cell's population of rows, which difference checks recompute
    (never output). Rows, not just shoppers: two releases over the same shoppers but different rows differ
    by the shoppers of those rows.
    """

    cells_sql: str
    remainder_sql: str
    where_sql: str
    ck_sql: str
    params: list[object]
    dimensions: list[str]
    metrics: list[str]
    blocked_fields: list[str]


def _ident(name: str) -> str:
    """Quote a schema column (allowlisted; the request's string is never used)."""
    if name not in EVENT_COLUMNS:
        raise PolicyViolation(f"unknown field {name!r}")
    return '"' + name + '"'


def _scope_checks(q: Query, policy: CleanRoomPolicy, brands: frozenset[str] | None) -> list[str]:
    """Brand scoping: raises :class:`AccessDenied` / :class:`PolicyViolation`; returns the brands the SQL
    must be restricted to (empty: no restriction)."""
    if q.scope == "benchmark":
        bench = policy.benchmark
        if bench is None:
            raise PolicyViolation(f"{policy.retailer}'s policy offers no cross-brand benchmarks")
        for d in q.dimensions:
            if d not in bench.dimensions:
                raise PolicyViolation(f"a benchmark groups only by {bench.dimensions}, not {d!r}")
        for f in q.filters:
            if f.column not in bench.filterable:
                raise PolicyViolation(f"a benchmark filters only on {bench.filterable}, not {f.column!r}")
        return []
    if brands is None:
        return []
    if not brands:
        raise AccessDenied(f"no brand of {policy.retailer}'s data is in your scope")
    for f in q.filters:
        if f.column == "brand":
            values = f.value if isinstance(f.value, list) else [f.value]
            outside = sorted(set(values) - brands)
            if outside:
                raise AccessDenied(
                    f"brand {outside[0]!r} is outside your scope (your brands: {sorted(brands)})"
                )
    return sorted(brands)


def compile_query(
    q: Query, policy: CleanRoomPolicy, version: int, brands: frozenset[str] | None = None
) -> CompiledQuery:
    """Validate ``q`` against ``policy`` and compile it over data versions ``<= version``, restricted to
    the rows of ``brands`` (None: every brand) unless it is a benchmark the policy allows."""
    scoped = _scope_checks(q, policy, brands)
    sensitive = {policy.identity_column, *policy.blocked_fields}
    blocked = [d for d in q.dimensions if d in sensitive]
    dims = [d for d in q.dimensions if d not in sensitive]
    _check_fields(q, policy, dims)
    where, params = _where(q, policy, sensitive, scoped, version)
    ident = _ident(policy.identity_column)
    dim_sql = [_ident(d) for d in dims]
    # the cell key: dimension values joined by U+001F, NULL spelled U+0000 (never a data value here)
    ck = (
        "concat_ws(chr(31), " + ", ".join(f"coalesce(CAST({d} AS VARCHAR), chr(0))" for d in dim_sql) + ")"
        if dims
        else "'*'"
    )
    base = f"base AS (SELECT * FROM {EVENTS} WHERE {' AND '.join(where)})"
    keyed = f"{base}, keyed AS (SELECT *, {ck} AS __ck FROM base)"  # per-row cell key: only where needed
    # one row per cell; without dimensions one row in all (even over no data: a suppressed empty cell)
    group = f" GROUP BY {', '.join(dim_sql)}" if dims else ""
    ck_out = f"{ck} AS __ck"  # computed on the grouped values
    metric_sql = [f"{METRICS[m]} AS {_ident_alias(m)}" for m in q.metrics]
    if not policy.dp_on:
        cells_sql = (
            f"WITH {base} SELECT {', '.join([*dim_sql, *metric_sql])}, COUNT(DISTINCT {ident}) AS __n, "
            f"{ck_out} FROM base{group}"
        )
    else:  # bound each shopper's contribution: at most L cells, each metric clamped to [0, bound]
        bounds = policy.dp.metric_bounds
        clamped = [
            f"SUM(LEAST(GREATEST({_ident_alias(m)}, 0), {float(bounds[m])!r})) AS {_ident_alias(m)}"
            for m in q.metrics
        ]
        cells_sql = (
            f"WITH {base}, per_shopper AS (SELECT {', '.join([*dim_sql, ident, *metric_sql])}, {ck_out} "
            f"FROM base GROUP BY {', '.join([*dim_sql, ident])}), bounded AS (SELECT * FROM per_shopper "
            f"QUALIFY row_number() OVER (PARTITION BY {ident} ORDER BY hash(__ck || {ident})) <= "
            f"{int(policy.dp.max_cells_per_shopper)}) "
            f"SELECT {', '.join([*dim_sql, *clamped])}, COUNT(*) AS __n, {ck_out} FROM bounded{group}"
        )
    remainder_sql = ""
    if dims and not policy.dp_on:
        remainder_sql = (
            f"WITH {keyed}, small AS (SELECT __ck FROM keyed GROUP BY __ck HAVING COUNT(DISTINCT {ident}) < ?) "
            f"SELECT {', '.join(metric_sql)}, COUNT(DISTINCT {ident}) AS __n FROM keyed "
            f"WHERE __ck IN (SELECT __ck FROM small)"
        )
    where_sql = " AND ".join(where)
    return CompiledQuery(cells_sql, remainder_sql, where_sql, ck, params, dims, list(q.metrics), blocked)


def _check_fields(q: Query, policy: CleanRoomPolicy, dims: list[str]) -> None:
    """PolicyViolation for a dimension or metric the policy does not offer, or an epsilon it cannot take."""
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
    if not policy.dp_on and q.epsilon is not None:
        raise PolicyViolation(f"{policy.retailer}'s policy has no differential privacy: omit epsilon")
    if policy.dp_on:
        unbounded = [m for m in q.metrics if m not in policy.dp.metric_bounds]
        if unbounded:
            raise PolicyViolation(f"metrics {unbounded} have no declared bound for differential privacy")


def _where(
    q: Query, policy: CleanRoomPolicy, sensitive: set[str], scoped: list[str] | None, version: int
) -> tuple[list[str], list[object]]:
    """The row filter (brand scope, the query's filters and dates, the data version) and its parameters."""
    where: list[str] = ["TRUE"]
    params: list[object] = []
    if scoped:
        where.append(f'"brand" IN ({", ".join("?" for _ in scoped)})')
        params.extend(scoped)
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
    where.append('"_batch" <= ?')
    params.append(version)
    return where, params


def _ident_alias(metric: str) -> str:
    return '"' + metric + '"'  # metric names come from METRICS' keys (checked above)
