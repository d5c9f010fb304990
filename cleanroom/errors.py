"""Clean-room errors; messages are safe to show to the querying tenant."""


class CleanRoomError(Exception):
    """Base class."""


class PolicyViolation(CleanRoomError):
    """The query asks for something the retailer's policy does not allow (HTTP 400/403)."""
