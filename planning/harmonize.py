"""Harmonisation: map a retailer's own field names onto our event schema, and say what did not map.

Matching, in order: exact schema name; a known synonym; the closest schema name or synonym by edit
similarity (difflib, cutoff 0.8). Each schema column is taken at most once. The result is a mapping
``native -> schema`` plus the native columns left unmapped and the schema columns nobody provides.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

SYNONYMS: dict[str, list[str]] = {
    "shopper_id": ["customer_id", "cust_key", "cust_id", "loyalty_id", "household_id", "user_id"],
    "event_date": ["date", "txn_day", "txn_date", "day", "event_day", "ts_date"],
    "event_type": ["event", "evt", "action", "type"],
    "sku": ["item_id", "product_id", "upc", "gtin", "item"],
    "brand": ["mfr_name", "manufacturer", "brand_name", "mfr"],
    "category": ["dept", "department", "category_name", "cat"],
    "placement": ["ad_slot", "ad_placement", "slot", "inventory", "channel"],
    "quantity": ["qty", "units", "unit_qty"],
    "revenue": ["sales_amt", "sales", "amount", "gmv", "net_sales"],
    "cost": ["ad_cost", "spend", "media_cost"],
    "margin": ["gross_margin", "gm", "margin_pct"],
    "stock_level": ["on_hand", "inventory_level", "stock", "oh_units"],
    "promo_flag": ["promo", "on_promo", "promotion", "deal_flag"],
}


@dataclass(frozen=True)
class Harmonization:
    """``mapping`` native -> schema; native columns that map to nothing; schema columns not provided."""

    mapping: dict[str, str]
    unmapped: list[str]
    missing: list[str]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def harmonize(columns: list[str], schema: list[str]) -> Harmonization:
    """Map ``columns`` (a retailer's header) onto ``schema`` (see the module contract)."""
    names: dict[str, str] = {}  # candidate spelling -> schema column
    for col in schema:
        names[col] = col
        for syn in SYNONYMS.get(col, []):
            names.setdefault(syn, col)
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    pending = []
    for native in columns:
        target = names.get(_norm(native))
        if target and target not in taken:
            mapping[native] = target
            taken.add(target)
        else:
            pending.append(native)
    unmapped = []
    for native in pending:
        free = [n for n, col in names.items() if col not in taken]
        close = difflib.get_close_matches(_norm(native), free, n=1, cutoff=0.8)
        if close:
            mapping[native] = names[close[0]]
            taken.add(names[close[0]])
        else:
            unmapped.append(native)
    return Harmonization(mapping, unmapped, [c for c in schema if c not in taken])
