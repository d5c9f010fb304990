"""A small retailer event file for clean-room tests: cells at k-1, k, k+1 distinct shoppers and a whale."""

from __future__ import annotations

import csv
from pathlib import Path

from cleanroom.policy import CleanRoomPolicy
from cleanroom.schema import EVENT_COLUMNS


def event(shopper: str, sku: str, event_type: str = "purchase", day: str = "2026-01-05") -> dict[str, object]:
    return {
        "shopper_id": shopper,
        "event_date": day,
        "event_type": event_type,
        "sku": sku,
        "brand": "brewmax",
        "category": "coffee",
        "placement": "search",
        "quantity": 1,
        "revenue": 10.0,
        "cost": 0.5,
        "margin": 3.0,
        "stock_level": 40,
        "promo_flag": False,
    }


def write_events(path: Path, k: int) -> Path:
    """CSV with sku at_k (k shoppers), below_k (k-1), above_k (k+1), one_shopper (1 shopper, 500 rows)."""
    rows = [event(f"a{i}", "at_k") for i in range(k)]
    rows += [event(f"b{i}", "below_k") for i in range(k - 1)]
    rows += [event(f"c{i}", "above_k") for i in range(k + 1)]
    rows += [event("whale", "one_shopper") for _ in range(500)]
    return write_rows(path, rows)


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    """CSV of ``rows`` in the event schema."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(EVENT_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return path


TENANTS = ["brand_x", "brand_y"]


def exact_policy(**fields: object) -> CleanRoomPolicy:
    """Mode exact for the test tenants (trusted partners who see every brand of the test data)."""
    base: dict[str, object] = {
        "retailer": "acme",
        "mode": "exact",
        "trusted_tenants": TENANTS,
        "unscoped_tenants": TENANTS,
        "report_suppressed_cells": True,
    }
    return CleanRoomPolicy.model_validate({**base, **fields})


def dp_policy(**fields: object) -> CleanRoomPolicy:
    """Mode dp for the test tenants (who see every brand of the test data)."""
    return CleanRoomPolicy.model_validate({"retailer": "acme", "unscoped_tenants": TENANTS, **fields})
