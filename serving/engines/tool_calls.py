"""``parallel_tool_calls: false`` enforced while generating, not only after.

vLLM forces ``tool_choice: "required"`` with a JSON schema "an array of at least one call" and, when the
request says ``parallel_tool_calls: false``, drops every call but the first once generation is over. A model
that does not know when to stop (small or random models) then writes calls until ``max_tokens`` and the
answer has none at all. :func:`install` wraps vLLM's ``ToolParser.adjust_request`` (every parser calls it)
so that such a request's schema also says ``maxItems: 1``: the grammar closes the array after one call.
Called once per process by :class:`serving.engines.vllm_engine.VLLMEngine` (the OpenAI layer runs there).
"""

from __future__ import annotations

from typing import Any

_INSTALLED = False


def one_call_only(request: Any) -> Any:
    """Add ``maxItems: 1`` to a "required" request's call-array schema when parallel calls are off."""
    so = getattr(request, "structured_outputs", None)
    schema = getattr(so, "json", None) if so is not None else None
    if (
        getattr(request, "tool_choice", None) == "required"
        and getattr(request, "parallel_tool_calls", True) is False
        and isinstance(schema, dict)
        and schema.get("type") == "array"
    ):
        schema["maxItems"] = 1
    return request


def install() -> None:
    """Wrap ``vllm.tool_parsers.ToolParser.adjust_request`` with :func:`one_call_only` (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from vllm.tool_parsers.abstract_tool_parser import ToolParser

    original = ToolParser.adjust_request

    def adjust_request(self: Any, request: Any) -> Any:
        return one_call_only(original(self, request))

    ToolParser.adjust_request = adjust_request  # type: ignore[method-assign]
    _INSTALLED = True
