"""Which Ray node this process runs on (names node-local caches: '{node}' in adapters.*_root)."""

from __future__ import annotations


def node_name() -> str:
    """The first 12 hex digits of this process's Ray node id, or 'local' outside a Ray worker."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())[:12]
    except Exception:  # no Ray, or no runtime context (a plain driver before ray.init)
        pass
    return "local"
