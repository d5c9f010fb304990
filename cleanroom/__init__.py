"""Clean room: policy-enforced aggregate queries over retailer data in DuckDB.

The documented event schema, per-retailer policy, structured queries compiled to parameterised SQL from
allowlisted identifiers only, release of cells with >= k DISTINCT shoppers (the suppressed remainder
obeys k too), difference checks, optional differential privacy (OpenDP) with a persisted epsilon ledger,
and a durable audit log. Usable without Ray; imports nothing of ours.
"""

from cleanroom.dp import BudgetExhausted
from cleanroom.errors import CleanRoomError, PolicyViolation
from cleanroom.policy import CleanRoomPolicy, DPPolicy
from cleanroom.query import Query
from cleanroom.room import CleanRoom, QueryResult

__all__ = [
    "BudgetExhausted",
    "CleanRoom",
    "CleanRoomError",
    "CleanRoomPolicy",
    "DPPolicy",
    "PolicyViolation",
    "Query",
    "QueryResult",
]
