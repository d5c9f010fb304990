"""LangChain's tool calling against rmn-lora, as an agent framework drives it: ``bind_tools`` with a named and a
``"required"`` tool_choice, streamed tool-call chunks, ``with_structured_output(method="function_calling")`` and
JSON mode, through the tenant's implicit stack (``base:auto``). Prints what came back; exit 1 if any of them
returned no parsed call.

  python -m examples.agents.langchain_tools --url http://127.0.0.1:8000 --key demo-brewmax-key
  python -m examples.agents.langchain_tools --local      # starts the federated demo app (after `make demo`)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import BaseModel, Field

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "plan_budget",
            "description": "Plan a media budget",
            "parameters": {
                "type": "object",
                "properties": {"budget": {"type": "integer"}},
                "required": ["budget"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]


class Channel(BaseModel):
    """A channel pick for a campaign."""

    channel: str = Field(description="onsite or offsite")
    weekly_budget: int


def check(url: str, key: str, model: str = "base:auto") -> bool:
    """Run every call; True when each returned what LangChain parses."""
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url + "/v1", api_key=key, model=model, temperature=0, max_tokens=80)  # type: ignore[arg-type,call-arg]
    ok = True
    for choice in ("plan_budget", "required"):
        msg: Any = llm.bind_tools(TOOLS, tool_choice=choice).invoke("Plan 5000 dollars for coffee")
        print(f"bind_tools(tool_choice={choice!r}) -> {msg.tool_calls}")
        ok &= bool(msg.tool_calls)
    chunks = list(llm.bind_tools(TOOLS, tool_choice="plan_budget").stream("Plan 5000 dollars for coffee"))
    merged: Any = sum(chunks[1:], chunks[0])
    print(f"stream -> {len(chunks)} chunks, merged tool calls {merged.tool_calls}")
    ok &= bool(merged.tool_calls)
    pick = llm.with_structured_output(Channel, method="function_calling").invoke(
        "Pick a channel for coffee ads"
    )
    print(f"with_structured_output(function_calling) -> {pick!r}")
    ok &= isinstance(pick, Channel)
    as_json: Any = llm.bind(response_format={"type": "json_object"}).invoke(
        "A JSON object for a coffee campaign"
    )
    print(f"json_object -> {json.loads(as_json.content)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m examples.agents.langchain_tools", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="rmn serve's base URL")
    p.add_argument("--key", default="demo-brewmax-key", help="the tenant's API key")
    p.add_argument("--model", default="base:auto", help="model name (an adapter, a stack or base:auto)")
    p.add_argument("--local", action="store_true", help="start the federated demo app here, then stop it")
    a = p.parse_args(argv)
    if a.local:
        from serving.demo.defaults import demo_config
        from serving.local import local_app

        with local_app(demo_config()) as url:
            return 0 if check(url, a.key, a.model) else 1
    return 0 if check(a.url, a.key, a.model) else 1


if __name__ == "__main__":
    sys.exit(main())
