"""The text of a comparison, written through the composed adapters: a JSON rationale from the planning
stack (guided decoding: the output must match :data:`planning.creatives.RATIONALE_SCHEMA`) and ad lines
from the creative stack, each checked against the brand's governance rules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from adapters import AdapterError
from federation.errors import FederationError
from planning.compare import winner
from planning.creatives import (
    RATIONALE_SCHEMA,
    creative_messages,
    matches_rationale_schema,
    rationale_messages,
)
from planning.governance import check_text, combine, model_request, parse_model_claims
from serving.data_config import ComparisonConfig


@dataclass(frozen=True)
class Completion:
    """A non-streamed chat completion made through the federation: status, OpenAI body, the model
    (version-pinned stack) that wrote it."""

    status: int
    body: dict[str, Any]
    model: str

    @property
    def text(self) -> str:
        """The message content ('' when absent)."""
        return str(self.body["choices"][0]["message"]["content"] or "")

    @property
    def error(self) -> str:
        """The error message of a failed completion."""
        return str(self.body.get("error", {}).get("message", "generation failed"))


Complete = Callable[[dict[str, Any]], Awaitable[Completion]]
"""Makes one completion for a request body (the router's, bound to the tenant and request id)."""


async def _rationale(
    complete: Complete, cfg: ComparisonConfig, model: str, result: dict[str, Any]
) -> dict[str, Any]:
    """The JSON rationale through the planning stack (guided decoding), parsed and checked against its schema."""
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
    ans = await complete(body)
    if ans.status != 200:
        return {"error": ans.error, "model": ans.model}
    try:
        parsed = json.loads(ans.text, strict=False)  # control characters inside strings are tolerated
    except json.JSONDecodeError:
        return {
            "error": "output is not complete JSON (max_tokens too small?)",
            "raw": ans.text,
            "model": ans.model,
        }
    return {"json": parsed, "schema_valid": matches_rationale_schema(parsed), "model": ans.model}


async def _creative(
    complete: Complete, cfg: ComparisonConfig, model: str, market: dict[str, Any], sku: dict[str, Any]
) -> dict[str, Any]:
    """One ad line for ``sku`` through the creative stack, with brand governance's verdict."""
    body = {
        "model": model,
        "federation": {"task": "creative"},
        "messages": creative_messages(
            sku["sku"], sku["category"], market["manufacturer"], market["retailer"]
        ),
        "max_tokens": cfg.creative_max_tokens,
        "temperature": 0,
    }
    ans = await complete(body)
    if ans.status != 200:
        return {"sku": sku["sku"], "error": ans.error}
    policy = cfg.governance.policy(market["retailer"], market["manufacturer"])
    verdict = check_text(ans.text, policy)
    if cfg.governance.model_check:
        verdict = combine(verdict, await model_claims(complete, model.split(":", 1)[0], ans.text), policy)
    return {"sku": sku["sku"], **verdict, "model": ans.model}


async def model_claims(complete: Complete, served_name: str, text: str) -> list[str] | None:
    """The claim classes the base model finds in ``text`` (guided JSON); None when it could not answer."""
    body = model_request(served_name, text)
    ans = await complete(body)
    return parse_model_claims(ans.text) if ans.status == 200 else None


def checked_rationale(rationale: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The rationale unless it recommends the plan the numbers do not favour: then its text is dropped and
    the answer says why (the numbers stand; a model's prose may not contradict them)."""
    recommended = (rationale.get("json") or {}).get("recommendation")
    favoured = winner(result)
    if recommended is None or favoured is None or recommended == favoured:
        return rationale
    return {
        "dropped": f"it recommended {recommended} while the true profits favour {favoured}",
        "model": rationale.get("model"),
        "raw": rationale.get("json"),
    }


async def write_texts(
    complete: Complete, cfg: ComparisonConfig, served_name: str, result: dict[str, Any]
) -> None:
    """Fill ``result["rationale"]``, ``result["creatives"]`` and ``result["models"]`` (errors are
    reported in place, the numbers stand without the text)."""
    model = f"{served_name}:auto"
    texts = [_rationale(complete, cfg, model, result)]
    texts += [_creative(complete, cfg, model, result["market"], s) for s in result.get("top_skus", [])]
    try:
        outputs = await asyncio.gather(*texts)
    except (FederationError, AdapterError) as e:  # the stack is refused: numbers only, and say why
        result["rationale"] = {"error": str(e)}
        result["creatives"] = []
        return
    result["rationale"] = checked_rationale(outputs[0], result)
    result["creatives"] = list(outputs[1:])
    result["models"] = {
        "rationale": str(outputs[0].get("model", "")),
        "creatives": str(outputs[1].get("model", "")) if len(outputs) > 1 else "",
    }
