"""Tenants' API-key hashes from a file (a mounted Kubernetes Secret), re-read when it changes.

The file (YAML or JSON) maps tenant id -> one sha256 hex digest or a list of them; several per tenant let a
key be rotated without downtime (add the new hash, move the clients, remove the old one). Contract:
:func:`read_key_file` validates the file against the configured tenant ids and raises :class:`KeyFileError`
naming the file and the entry; :meth:`KeyFile.poll` returns the new mapping when the file's content changed
(looked at no more often than every ``interval_s``) and None otherwise; a file that turns invalid keeps the
last good keys in force (logged), so a half-written Secret never locks every tenant out.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from federation.errors import FederationError

log = logging.getLogger("ray.serve")

KeyHashes = dict[str, tuple[str, ...]]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class KeyFileError(FederationError):
    """The key file is missing, unreadable or names an unknown tenant / a malformed hash."""


def parse_key_file(text: str, where: str, tenant_ids: Iterable[str]) -> KeyHashes:
    """The tenant -> hashes mapping in ``text`` (the content of ``where``); raises KeyFileError."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise KeyFileError(f"key file {where} is not valid YAML/JSON: {e}") from e
    if not isinstance(raw, dict):
        raise KeyFileError(f"key file {where}: expected a mapping tenant id -> sha256 hash(es)")
    known = set(tenant_ids)
    out: KeyHashes = {}
    owner: dict[str, str] = {}
    for tenant, value in raw.items():
        if tenant not in known:
            raise KeyFileError(f"key file {where}: {tenant!r} is not a tenant of federation.tenants")
        hashes = [value] if isinstance(value, str) else value
        if not isinstance(hashes, list) or not hashes:
            raise KeyFileError(f"key file {where}: {tenant}: expected a sha256 hash or a non-empty list")
        for h in hashes:
            if not isinstance(h, str) or not _SHA256.match(h):
                raise KeyFileError(
                    f"key file {where}: {tenant}: {str(h)[:12]!r}… is not a sha256 hex digest "
                    "(store `rmn tenants hash-key`'s output, never the key)"
                )
            if owner.setdefault(h, tenant) != tenant:
                raise KeyFileError(f"key file {where}: {tenant} and {owner[h]} share one API key")
        out[tenant] = tuple(dict.fromkeys(hashes))
    return out


def read_key_file(path: Path, tenant_ids: Iterable[str]) -> KeyHashes:
    """:func:`parse_key_file` of the file at ``path`` (read once)."""
    return KeyFile(path, tenant_ids).load()


class KeyFile:
    """The key file of a running router: read at start (errors raise), re-read when it changes."""

    def __init__(
        self,
        path: Path,
        tenant_ids: Iterable[str],
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._ids = tuple(tenant_ids)
        self._interval = interval_s
        self._clock = clock
        self._next = 0.0
        self._digest = ""

    def load(self) -> KeyHashes:
        """The keys now; raises KeyFileError (at start, a bad file must stop the replica)."""
        text = self._read()
        keys = parse_key_file(text, str(self.path), self._ids)
        self._digest = hashlib.sha256(text.encode()).hexdigest()
        self._next = self._clock() + self._interval
        return keys

    def poll(self) -> KeyHashes | None:
        """New keys when the file changed since the last good read; None when unchanged, not yet due, or
        invalid (the last good keys stay in force)."""
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self._interval
        try:
            text = self._read()
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest == self._digest:
                return None
            keys = parse_key_file(text, str(self.path), self._ids)
        except KeyFileError as e:
            log.error("tenant keys not reloaded, the last good keys stay in force: %s", e)
            return None
        self._digest = digest
        log.info("tenant keys reloaded from %s (%d tenants with keys)", self.path, len(keys))
        return keys

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except OSError as e:
            raise KeyFileError(f"key file {self.path} cannot be read: {e.strerror or e}") from e
