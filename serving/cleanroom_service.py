"""The clean-room deployment: one :class:`cleanroom.CleanRoom` per configured retailer.

DuckDB files are single-writer, so this deployment runs one replica, on the node that holds the files;
the router reaches it through a handle (nothing is read across nodes). Answers are plain dicts
``{"status": int, "body": ...}`` so the router can relay them without knowing clean-room types.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from cleanroom import CleanRoom, CleanRoomError, PolicyViolation, Query
from serving.config import AppConfig
from serving.vllm_engine import error_body


class CleanRoomService:
    """Ray Serve deployment class (bound by :func:`serving.app.build_app` when ``cleanroom`` is configured)."""

    def __init__(self, config: AppConfig) -> None:
        if config.cleanroom is None:
            raise ValueError("CleanRoomService needs config.cleanroom")
        self._rooms = {r.policy.retailer: CleanRoom(r.db_path, r.policy) for r in config.cleanroom.retailers}

    def _room(self, retailer: object) -> CleanRoom | dict[str, Any]:
        room = self._rooms.get(retailer) if isinstance(retailer, str) else None
        if room is None:
            return {
                "status": 404,
                "body": error_body(f"no clean room for retailer {retailer!r}", 404, "not_found_error"),
            }
        return room

    async def query(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer ``{"retailer": ..., "query": {...}}`` for ``tenant``."""
        room = self._room(body.get("retailer"))
        if isinstance(room, dict):
            return room
        try:
            q = Query.model_validate(body.get("query"))
            result = room.query(tenant, q)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            return {
                "status": 400,
                "body": error_body(f"invalid query: {loc}: {first['msg']}", 400, param=loc),
            }
        except PolicyViolation as e:
            return {"status": 400, "body": error_body(str(e), 400, "policy_violation")}
        except CleanRoomError as e:
            return {"status": 500, "body": error_body(str(e), 500, "server_error")}
        return {
            "status": 200,
            "body": {"retailer": room.policy.retailer, "k": room.policy.k, **asdict(result)},
        }

    async def schema(self, retailer: str) -> dict[str, Any]:
        """What a tenant may ask of ``retailer``: dimensions, metrics, filters, k, blocked fields."""
        room = self._room(retailer)
        if isinstance(room, dict):
            return room
        p = room.policy
        return {
            "status": 200,
            "body": {
                "retailer": p.retailer,
                "k": p.k,
                "dimensions": p.allowed_dimensions,
                "metrics": p.allowed_metrics,
                "filters": p.filterable,
                "blocked_fields": p.blocked_fields,
                "max_groups": p.max_groups,
            },
        }
