"""Small JSON records that must outlive a Ray cluster, kept beside the adapter registry.

Contract of :class:`Records`: documents live under ``<adapters.root>/.rmn-records/`` — a directory (shared
mount) or the registry's object store, opened with the registry's ``storage_options`` — so a new cluster (a
KubeRay upgrade makes one) reads what the old one wrote. :meth:`write` replaces a document whole (a directory:
temporary file + rename; an object store: one PUT); :meth:`read` returns None for a document that does not
exist; errors of the store raise :class:`RecordsUnavailable` (callers keep serving from memory and retry on the
next write). The registry ignores dot-directories, so records never appear as adapters.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from adapters.errors import RegistryUnavailable

DIRNAME = ".rmn-records"


class RecordsUnavailable(RegistryUnavailable):
    """The store holding the records (the registry's) could not be read or written: 503 like the registry."""


class Records:
    """See the module contract. ``root``: the registry root (a path or an fsspec URL)."""

    def __init__(self, root: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        from adapters.store import is_url

        text = str(root).rstrip("/")
        self._url = is_url(text)
        self._options = dict(storage_options or {})
        self._root = text if self._url else str(Path(text.removeprefix("file://")).expanduser())
        self.where = f"{text}/{DIRNAME}"
        self.key = hashlib.sha256(self.where.encode()).hexdigest()[:12]  # names the boards of this registry

    def _fs_and_base(self) -> tuple[Any, str]:
        """(fsspec filesystem or None for a directory, the records' base path); opened per call, so a
        Records pickles (it travels to the board actors) and never holds a stale connection."""
        if not self._url:
            return None, f"{self._root}/{DIRNAME}"
        import fsspec

        opts = {"use_listings_cache": False, "skip_instance_cache": True, **self._options}
        fs, base = fsspec.core.url_to_fs(self._root, **opts)
        return fs, f"{base.rstrip('/')}/{DIRNAME}"

    def read(self, name: str) -> Any | None:
        """The document ``name`` (e.g. ``jobs/job-1.json``), or None when there is none."""
        try:
            fs, base = self._fs_and_base()
            path = f"{base}/{name}"
            if fs is None:
                return json.loads(Path(path).read_text())
            with fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except Exception as e:
            raise RecordsUnavailable(f"records at {self.where}: reading {name} failed: {e!r}") from e

    def write(self, name: str, doc: Any) -> None:
        """Replace the document ``name`` with ``doc`` (JSON)."""
        data = json.dumps(doc, sort_keys=True).encode()
        try:
            fs, base = self._fs_and_base()
            path = f"{base}/{name}"
            if fs is not None:
                with fs.open(path, "wb") as f:
                    f.write(data)
                return
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except Exception as e:
            raise RecordsUnavailable(f"records at {self.where}: writing {name} failed: {e!r}") from e


BOARD_NAMESPACE = "rmn"  # the Ray namespace of every detached board


def detached_board(cls: type, base: str, records: Records | None) -> Any:
    """The cluster's actor of board class ``cls`` persisting to ``records``: detached (it outlives the replica
    that made it), named ``<base>-<registry key>`` (apps sharing a registry share it), created on first use."""
    import ray

    actor: Any = ray.remote(num_cpus=0)(cls)
    return actor.options(
        name=board_name(base, records), namespace=BOARD_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote(records=records)


def board_name(base: str, records: Records | None) -> str:
    """A board's actor name: one per registry its records live beside (apps sharing a registry share it)."""
    return base if records is None else f"{base}-{records.key}"


async def board_call(local: Any | None, actor: Any, method: str, *args: Any) -> Any:
    """``<board>.<method>(*args)`` on ``local`` (an in-process board: the gateway test tier) or else on the actor
    ``actor()`` returns; a refusal raised in the actor (an :class:`Exception` of ours) is raised here as it was
    raised, not wrapped."""
    if local is not None:
        return getattr(local, method)(*args)
    from ray.exceptions import RayTaskError

    try:
        return await getattr(actor(), method).remote(*args)
    except RayTaskError as e:
        cause = e.cause
        if isinstance(cause, Exception) and type(cause).__module__.split(".")[0] in ("federation", "serving"):
            raise cause from None
        raise
