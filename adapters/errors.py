"""Errors raised by the adapter registry; each carries a human-readable reason."""


class AdapterError(Exception):
    """Base class for adapter errors."""


class AdapterNotFound(AdapterError):
    """The requested adapter id (or version) is not in the registry."""


class InvalidAdapter(AdapterError):
    """An adapter (or an id naming one) failed validation; nothing was registered."""


class AdapterRetired(AdapterNotFound):
    """The version asked for was retired: no new request resolves to it (HTTP 410 for a pinned request)."""


class RegistryUnavailable(AdapterError):
    """The adapter store could not be reached (after retries); the caller should answer 503 and retry."""
