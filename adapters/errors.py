"""Errors raised by the adapter registry; each carries a human-readable reason (no HTTP status: the
serving edge maps classes to answers)."""


class AdapterError(Exception):
    """Base class for adapter errors."""


class AdapterNotFound(AdapterError):
    """The requested adapter id (or version) is not in the registry."""


class InvalidAdapter(AdapterError):
    """An adapter (or an id naming one) failed validation; nothing was registered."""


class AdapterExists(InvalidAdapter):
    """That id and version are registered already: versions are never overwritten."""


class AdapterRetired(AdapterNotFound):
    """The version asked for was retired: no new request resolves to it."""


class RegistryUnavailable(AdapterError):
    """The adapter store could not be reached (after retries); asking again later may succeed."""
