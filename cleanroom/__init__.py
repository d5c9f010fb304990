"""Clean room: policy-enforced aggregate queries over retailer data in DuckDB.

The documented event schema, per-retailer policy, structured queries compiled to parameterised SQL from
allowlisted identifiers only, brand scoping, differential privacy by default (OpenDP; budgets per tenant
and per room in exact micro-epsilon, durable), an exact mode for trusted partners (>= k DISTINCT
shoppers per cell, room-wide difference checks on rows), idempotent bounded loads or Parquet files read in place
(hash-verified), and a durable audit log. Threat model: docs/cleanroom.md. Usable without Ray; imports nothing of ours.
"""

from cleanroom.dp import BudgetExhausted
from cleanroom.errors import AccessDenied, CleanRoomError, DataChanged, PolicyViolation, QueryFailed
from cleanroom.policy import BenchmarkPolicy, CleanRoomPolicy, DPPolicy
from cleanroom.query import Query
from cleanroom.results import LoadReport, Querier, QueryResult
from cleanroom.room import CleanRoom

__all__ = [
    "AccessDenied",
    "BenchmarkPolicy",
    "BudgetExhausted",
    "CleanRoom",
    "CleanRoomError",
    "CleanRoomPolicy",
    "DPPolicy",
    "DataChanged",
    "LoadReport",
    "PolicyViolation",
    "Querier",
    "Query",
    "QueryFailed",
    "QueryResult",
]
