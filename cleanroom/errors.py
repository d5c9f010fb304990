"""Clean-room errors; messages are safe to show to the querying tenant (they never state exact counts)."""


class CleanRoomError(Exception):
    """Base class (HTTP 500 when nothing more specific applies)."""


class PolicyViolation(CleanRoomError):
    """The query asks for something the retailer's policy does not allow (HTTP 400)."""


class AccessDenied(PolicyViolation):
    """The tenant may not see this (another brand's rows, exact mode without trust): HTTP 403."""


class QueryFailed(CleanRoomError):
    """The query failed after its epsilon was charged (charged, audited as failed; HTTP 500)."""


class DataChanged(CleanRoomError):
    """An attached file no longer holds the bytes recorded when it was attached (HTTP 503: the room answers
    nothing until the file is restored)."""
