"""Text the composed adapters write for a comparison: the prompts and the rationale's JSON schema (enforced
by vLLM's guided decoding). Ad lines are checked by :mod:`planning.governance`."""

from __future__ import annotations

from typing import Any

RATIONALE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "recommendation": {"type": "string", "enum": ["full_data_plan", "cleanroom_plan"]},
        "key_driver": {
            "type": "string",
            "enum": ["margins", "stock", "promotions", "granularity", "attribution_bias", "noise"],
        },
        "confidence": {"type": "string", "enum": ["low", "medium", "high"]},
        "summary": {"type": "string", "maxLength": 100},
    },
    "required": ["recommendation", "key_driver", "confidence", "summary"],
    "additionalProperties": False,
}


def rationale_messages(result: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages asking the planning stack to explain a comparison (numbers from ``result``)."""
    f, c, d = result["full"]["score"], result["cleanroom"]["score"], result["deltas"]
    text = (
        f"Media plan comparison for {result['market']['manufacturer']} at {result['market']['retailer']}, "
        f"budget {result['request']['budget']:g}. Full-data plan: iROAS {f['iroas']}, profit {f['profit']}, "
        f"{f['skus_covered']} SKUs. Clean-room plan: iROAS {c['iroas']}, profit {c['profit']}, "
        f"{c['skus_covered']} SKUs; the clean room blocked {', '.join(result['cleanroom_view']['blocked_fields'])}. "
        f"Profit delta {d['profit']}. Which plan do you recommend and why? Answer in JSON."
    )
    return [{"role": "user", "content": text}]


def creative_messages(sku: str, category: str, brand: str, retailer: str) -> list[dict[str, str]]:
    """Chat messages asking the creative stack for one ad line."""
    return [
        {
            "role": "user",
            "content": f"Write one short ad line for {brand} {category} (SKU {sku}) on {retailer}.",
        }
    ]


def matches_rationale_schema(obj: Any) -> bool:
    """``obj`` matches :data:`RATIONALE_SCHEMA` (checked after generation too: guided decoding is the first line)."""
    props = RATIONALE_SCHEMA["properties"]
    if not isinstance(obj, dict) or set(obj) != set(RATIONALE_SCHEMA["required"]):
        return False
    for key, spec in props.items():
        value = obj[key]
        if not isinstance(value, str) or ("enum" in spec and value not in spec["enum"]):
            return False
        if len(value) > spec.get("maxLength", 10**9):
            return False
    return True
