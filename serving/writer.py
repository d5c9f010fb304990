"""The text of a comparison, written through the composed adapters: a JSON rationale from the planning
stack (guided decoding: the output must match :data:`federation.creatives.RATIONALE_SCHEMA`) and ad lines
from the creative stack, each checked against the brand's governance rules."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from federation.creatives import RATIONALE_SCHEMA, check_line, creative_messages, rationale_messages
from serving.access import GateError


class _Completer(Protocol):
    _cfg: Any

    async def complete(self, tenant: Any, body: dict[str, Any], request_id: str) -> dict[str, Any]: ...


def _text(answer: dict[str, Any]) -> str:
    return str(answer["body"]["choices"][0]["message"]["content"] or "")


async def write_texts(router: _Completer, tenant: Any, result: dict[str, Any], request_id: str) -> None:
    """Fill ``result["rationale"]``, ``result["creatives"]`` and ``result["models"]`` (errors are
    reported in place, the numbers stand without the text)."""
    cfg = router._cfg.comparison
    model = f"{router._cfg.model.served_name}:auto"
    market = result["market"]

    async def rationale() -> dict[str, Any]:
        body = {
            "model": model,
            "federation": {"task": "planning"},
            "messages": rationale_messages(result),
            "max_tokens": cfg.rationale_max_tokens,
            "temperature": 0,
            # vLLM guided decoding (xgrammar; compact JSON per engine.compact_json)
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "rationale", "schema": RATIONALE_SCHEMA, "strict": True},
            },
        }
        ans = await router.complete(tenant, body, request_id)
        if ans["status"] != 200:
            return {
                "error": ans["body"].get("error", {}).get("message", "generation failed"),
                "model": ans["model"],
            }
        raw = _text(ans)
        try:
            parsed = json.loads(raw, strict=False)  # control characters inside strings are tolerated
        except json.JSONDecodeError:
            return {
                "error": "output is not complete JSON (max_tokens too small?)",
                "raw": raw,
                "model": ans["model"],
            }
        return {"json": parsed, "schema_valid": _valid(parsed), "model": ans["model"]}

    async def creative(sku: dict[str, Any]) -> dict[str, Any]:
        body = {
            "model": model,
            "federation": {"task": "creative"},
            "messages": creative_messages(
                sku["sku"], sku["category"], market["manufacturer"], market["retailer"]
            ),
            "max_tokens": cfg.creative_max_tokens,
            "temperature": 0,
        }
        ans = await router.complete(tenant, body, request_id)
        if ans["status"] != 200:
            return {"sku": sku["sku"], "error": ans["body"].get("error", {}).get("message", "failed")}
        g = cfg.governance
        verdict = check_line(_text(ans), g.banned_words, g.max_chars, g.min_chars)
        return {"sku": sku["sku"], **verdict, "model": ans["model"]}

    try:
        outputs = await asyncio.gather(rationale(), *[creative(s) for s in result.get("top_skus", [])])
    except GateError as e:  # the tenant may not compose the stack: numbers only, and say why
        result["rationale"] = {"error": str(e)}
        result["creatives"] = []
        return
    result["rationale"] = outputs[0]
    result["creatives"] = list(outputs[1:])
    result["models"] = {
        "rationale": str(outputs[0].get("model", "")),
        "creatives": str(outputs[1].get("model", "")) if len(outputs) > 1 else "",
    }


def _valid(obj: Any) -> bool:
    """``obj`` matches :data:`RATIONALE_SCHEMA` (checked here too: guided decoding is the first line)."""
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
