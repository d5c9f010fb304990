"""The retailer event schema (one fact table, ``events``), documented in README "Clean room schema".

One row per event. Column -> DuckDB type. ``event_type`` is impression | click | purchase; ``revenue`` and
``quantity`` are set on purchases, ``cost`` (ad spend) on impressions and clicks. ``margin``, ``stock_level``
and ``promo_flag`` are the retailer's sensitive fields: present in the data, typically blocked by policy.
"""

from __future__ import annotations

EVENT_COLUMNS: dict[str, str] = {
    "shopper_id": "VARCHAR",
    "event_date": "DATE",
    "event_type": "VARCHAR",
    "sku": "VARCHAR",
    "brand": "VARCHAR",
    "category": "VARCHAR",
    "placement": "VARCHAR",
    "quantity": "INTEGER",
    "revenue": "DOUBLE",
    "cost": "DOUBLE",
    "margin": "DOUBLE",
    "stock_level": "INTEGER",
    "promo_flag": "BOOLEAN",
}

# metric name -> SQL over ``events`` (fixed text, never built from user input)
METRICS: dict[str, str] = {
    "impressions": "COUNT(*) FILTER (WHERE event_type = 'impression')",
    "clicks": "COUNT(*) FILTER (WHERE event_type = 'click')",
    "purchases": "COUNT(*) FILTER (WHERE event_type = 'purchase')",
    "units": "COALESCE(SUM(quantity) FILTER (WHERE event_type = 'purchase'), 0)",
    "revenue": "COALESCE(SUM(revenue) FILTER (WHERE event_type = 'purchase'), 0)",
    "spend": "COALESCE(SUM(cost), 0)",
    "shoppers": "COUNT(DISTINCT shopper_id)",
}

NUMERIC_COLUMNS = ("quantity", "revenue", "cost", "margin", "stock_level")
INTEGER_METRICS = frozenset({"impressions", "clicks", "purchases", "units", "shoppers"})
EVENT_TYPES = ("impression", "click", "purchase")


def quote(name: str) -> str:
    """A column name (of the schema or of a loaded file) as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
