"""LoRA adapters as data: manifests, a versioned registry over a directory or object store, validation.

Public surface: :class:`AdapterManifest`, :class:`AdapterRegistry`, :class:`AdapterError`,
:func:`validate_adapter_id`. Imports nothing from the rest of rmn-lora.
"""

from adapters.errors import (
    AdapterError,
    AdapterExists,
    AdapterNotFound,
    AdapterRetired,
    InvalidAdapter,
    RegistryUnavailable,
)
from adapters.manifest import AdapterKind, AdapterManifest, Visibility, validate_adapter_id
from adapters.registry import AdapterRegistry

__all__ = [
    "AdapterError",
    "AdapterExists",
    "AdapterKind",
    "AdapterManifest",
    "AdapterNotFound",
    "AdapterRegistry",
    "AdapterRetired",
    "InvalidAdapter",
    "RegistryUnavailable",
    "Visibility",
    "validate_adapter_id",
]
