"""Clean room: policy-enforced aggregate queries over retailer data in DuckDB (work in progress, issue #5).

Built so far: the documented event schema, per-retailer policy, structured queries compiled to
parameterised SQL from allowlisted identifiers only, and release of cells with >= k DISTINCT shoppers
(suppressed remainder obeys k too). Not yet: difference checks, differential privacy and its ledger,
audit log, rate limits, the Ray Serve deployment and CLI. Imports nothing of ours.
"""

from cleanroom.errors import CleanRoomError, PolicyViolation
from cleanroom.policy import CleanRoomPolicy
from cleanroom.query import Query
from cleanroom.room import CleanRoom, QueryResult

__all__ = ["CleanRoom", "CleanRoomError", "CleanRoomPolicy", "PolicyViolation", "Query", "QueryResult"]
