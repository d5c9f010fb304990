"""The six roles of a retail-media plan as an agent crew over rmn-lora's OpenAI API (LangGraph).

Each role is an agent: a chat model on its own composed stack (``base:auto`` + the ``federation`` field's task:
the tenant's industry → retailer → brand adapters with the role's task adapter), one tool that calls the
product's API with the tenant's key, and a turn that reads the tool's answer back and writes a note.

  harmonizer   POST /v1/harmonize          the retailer export's field names onto the clean room's schema
  analyst      POST /v1/cleanroom/query    one aggregate under the retailer's policy (k, DP)
  planner      POST /v1/plans/compare      full-data plan vs clean-room plan, both scored on the truth
  creative     (its tool call carries the ad line it writes, one per top SKU of the plan)
  governance   POST /v1/governance/check   the brand's rules on those lines
  measurement  GET  /v1/cleanroom/budget   privacy spent; reports the comparison's measured deltas

Tool calls are forced by name (``tool_choice``) unless ``--tool-choice auto``: the model fills the arguments,
constrained by each tool's JSON schema (enums drawn from the API's own answers), so the run is deterministic
with greedy decoding. A refusal (401/403/429/...) is reported in the step and the final message; the crew
does not stop on it. The final message states the comparison's measured numbers.

  python -m examples.agents.crew --url http://127.0.0.1:8000 --key demo-brewmax-key --brand brewmax
  python -m examples.agents.crew --local     # starts the federated demo app (after `make demo`) and stops it
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

import httpx

# the retailer's export header of the synthetic market (planning.market.RETAILER_FIELDS)
DEFAULT_EXPORT = ["cust_key", "txn_day", "evt", "item_id", "mfr_name", "dept", "ad_slot", "qty", "sales_amt",
                  "ad_cost", "loyalty_tier"]  # fmt: skip
METRICS = ("iroas", "incremental_revenue", "profit", "skus_covered", "forecast_wape")


@dataclass
class Api:
    """The product's HTTP API as one tenant: every call carries its key; answers are (status, body)."""

    url: str
    key: str
    timeout_s: float = 300
    calls: list[dict[str, Any]] = field(default_factory=list)

    def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        r = httpx.request(
            method,
            self.url + path,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=self.timeout_s,
            **kw,
        )
        try:
            body = r.json()
        except ValueError:
            body = {"error": {"message": r.text[:200]}}
        self.calls.append({"method": method, "path": path, "status": r.status_code})
        return r.status_code, body


def refusal(status: int, body: Any) -> str | None:
    """None for a 2xx answer, else "<status>: <the API's reason>"."""
    if 200 <= status < 300:
        return None
    msg = body.get("error", {}).get("message") if isinstance(body, dict) else None
    return f"{status}: {msg or body}"


class CrewState(TypedDict):
    """What the crew knows: each step's record, and the data tools put there for later roles."""

    steps: Annotated[list[dict[str, Any]], operator.add]
    data: Annotated[dict[str, Any], operator.or_]


@dataclass
class Role:
    """One agent: its name, its stack's task, what it is asked, and its tool (built from the state so far)."""

    name: str
    task: str
    ask: str
    tool: Callable[[dict[str, Any]], tuple[dict[str, Any], Callable[..., tuple[str, dict[str, Any]]]]]


@dataclass
class Crew:
    """The crew's settings; :meth:`run` returns the final state (steps, data, final message)."""

    api: Api
    brand: str
    retailer: str = "acme"
    budget: float = 5000.0
    seed: int | None = None
    model: str = "base:auto"
    tool_choice: str = "forced"  # or "auto"
    export_fields: list[str] = field(default_factory=lambda: list(DEFAULT_EXPORT))
    tasks: dict[str, str] = field(default_factory=dict)  # role -> federation task, over the roles' own
    act_tokens: int = 150
    note_tokens: int = 24
    echo: Callable[[str], None] = print

    # ---- the tools (schema, function) ---------------------------------------------------------
    def harmonize_tool(self, data: dict[str, Any]) -> tuple[dict[str, Any], Callable[..., Any]]:
        schema = _fn("map_export_fields", "Map the retailer export's field names onto the clean-room schema",
                     {"retailer": {"type": "string", "enum": [self.retailer]}})  # fmt: skip

        def run(retailer: str) -> tuple[str, dict[str, Any]]:
            status, body = self.api.call("POST", "/v1/harmonize", json={"fields": self.export_fields})
            if err := refusal(status, body):
                return err, {"harmonization_error": err}
            short = {"mapped": len(body["mapping"]), "unmapped": body["unmapped"], "missing": body["missing"]}
            return json.dumps(short), {"harmonization": body}

        return schema, run

    def cleanroom_tool(self, data: dict[str, Any]) -> tuple[dict[str, Any], Callable[..., Any]]:
        status, schema_body = self.api.call("GET", "/v1/cleanroom/schema", params={"retailer": self.retailer})
        allowed = schema_body if status == 200 else {}  # a refused schema: the query below gets the refusal
        metrics = allowed.get("metrics") or ["purchases"]
        dims = allowed.get("dimensions") or ["placement"]
        schema = _fn("cleanroom_query", "One aggregate of the retailer's events under its clean-room policy",
                     {"metric": {"type": "string", "enum": list(metrics)},
                      "dimension": {"type": "string", "enum": list(dims)}})  # fmt: skip

        def run(metric: str, dimension: str) -> tuple[str, dict[str, Any]]:
            q = {"retailer": self.retailer, "query": {"dimensions": [dimension], "metrics": [metric]}}
            status, body = self.api.call("POST", "/v1/cleanroom/query", json=q)
            if err := refusal(status, body):
                return err, {"cleanroom_error": err}
            rows = body.get("rows", [])
            short = {"rows": len(rows), "epsilon_spent": body.get("epsilon_spent"), "first": rows[:2]}
            return json.dumps(short)[:400], {"cleanroom": {"query": q["query"], "rows": len(rows)}}

        return schema, run

    def planner_tool(self, data: dict[str, Any]) -> tuple[dict[str, Any], Callable[..., Any]]:
        schema = _fn("compare_plans", "Plan the budget with the brand's full data and through the clean room",
                     {"budget": {"type": "number", "enum": [self.budget]},
                      "exploration_share": {"type": "number", "enum": [0.05, 0.1]}})  # fmt: skip

        def run(budget: float, exploration_share: float) -> tuple[str, dict[str, Any]]:
            req = {"manufacturer": self.brand, "retailer": self.retailer, "budget": budget,
                   "exploration_share": exploration_share, "write_text": False, "creatives": 3}  # fmt: skip
            if self.seed is not None:
                req["seed"] = self.seed
            status, body = self.api.call("POST", "/v1/plans/compare", json=req)
            if err := refusal(status, body):
                return err, {"comparison_error": err}
            d = body["deltas"]
            short = {k: round(d[k], 3) for k in METRICS} | {"verdict": body["verdict"]}
            return json.dumps(short), {"comparison": body}

        return schema, run

    def creative_tool(self, data: dict[str, Any]) -> tuple[dict[str, Any], Callable[..., Any]]:
        skus = [s["sku"] for s in (data.get("comparison") or {}).get("top_skus", [])] or ["any"]
        schema = _fn("propose_ad_line", "Propose one short ad line for a SKU of the plan",
                     {"sku": {"type": "string", "enum": skus},
                      "line": {"type": "string", "minLength": 1, "maxLength": 90}})  # fmt: skip

        def run(sku: str, line: str) -> tuple[str, dict[str, Any]]:
            return json.dumps({"recorded": sku}), {
                "ad_lines": [*data.get("ad_lines", []), {"sku": sku, "line": line}]
            }

        return schema, run

    def governance_tool(self, data: dict[str, Any]) -> tuple[dict[str, Any], Callable[..., Any]]:
        lines = [x["line"] for x in data.get("ad_lines", [])] or ["(no ad line was proposed)"]
        schema = _fn("check_ad_lines", "Check ad lines against the brand's governance rules",
                     {"lines": {"type": "array", "items": {"type": "string", "enum": sorted(set(lines))},
                                "minItems": 1, "maxItems": len(set(lines))}})  # fmt: skip

        def run(lines: list[str]) -> tuple[str, dict[str, Any]]:
            status, body = self.api.call("POST", "/v1/governance/check", json={"lines": lines})
            if err := refusal(status, body):
                return err, {"governance_error": err}
            ok = sum(v["ok"] for v in body["verdicts"])
            return json.dumps({"approved": ok, "of": len(lines)}), {"governance": body["verdicts"]}

        return schema, run

    def measurement_tool(self, data: dict[str, Any]) -> tuple[dict[str, Any], Callable[..., Any]]:
        schema = _fn("measure", "The comparison's scores on the truth and the privacy budget spent",
                     {"metric": {"type": "string", "enum": list(METRICS)}})  # fmt: skip

        def run(metric: str) -> tuple[str, dict[str, Any]]:
            status, body = self.api.call("GET", "/v1/cleanroom/budget", params={"retailer": self.retailer})
            budget = body if status == 200 else {"error": refusal(status, body)}
            spent = {
                k: budget[k] for k in ("mode", "epsilon_spent", "epsilon_budget", "error") if k in budget
            }
            c = data.get("comparison")
            if c is None:
                return json.dumps({"comparison": "none", "privacy": spent}), {"privacy": budget}
            m = {"full": c["full"]["score"][metric], "cleanroom": c["cleanroom"]["score"][metric],
                 "delta": c["deltas"][metric]}  # fmt: skip
            return json.dumps({metric: m, "privacy": spent}), {"privacy": budget, "measured": metric}

        return schema, run

    # ---- the graph -------------------------------------------------------------------------------
    def roles(self) -> list[Role]:
        b, r = self.brand, self.retailer
        return [
            Role("harmonizer", "harmonization", f"Map {r}'s export fields onto the clean-room schema.", self.harmonize_tool),
            Role("analyst", "planning", f"Ask {r}'s clean room for one aggregate useful to plan {b}.", self.cleanroom_tool),
            Role("planner", "planning", f"Plan {b}'s budget of {self.budget:g} at {r}, both ways.", self.planner_tool),
            Role("creative", "creative", f"Write one ad line for a top SKU of {b}'s plan.", self.creative_tool),
            Role("governance", "planning", f"Check {b}'s ad lines against the brand rules.", self.governance_tool),
            Role("measurement", "planning", f"Report what the clean room cost {b} against full data.", self.measurement_tool),
        ]  # fmt: skip

    def _llm(self, task: str, max_tokens: int) -> Any:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            base_url=self.api.url + "/v1",
            api_key=self.api.key,  # type: ignore[arg-type]
            model=self.model,
            temperature=0,
            max_tokens=max_tokens,  # type: ignore[call-arg]
            max_retries=2,  # 429/503 with Retry-After are retried by the client
            timeout=self.api.timeout_s,
            extra_body={"federation": {"task": task}},
        )

    def step(self, role: Role) -> Callable[[CrewState], dict[str, Any]]:
        """One role's turn: forced tool call -> the tool hits the API -> the agent reads the answer back."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

        def node(state: CrewState) -> dict[str, Any]:
            data = dict(state["data"])
            schema, run = role.tool(data)
            name = schema["function"]["name"]
            choice: Any = name if self.tool_choice == "forced" else "auto"
            messages: list[Any] = [
                SystemMessage(f"You are the {role.name} of a retail media team working for {self.brand}."),
                HumanMessage(role.ask),
            ]
            record: dict[str, Any] = {"role": role.name, "tool": name}
            try:
                llm = self._llm(self.tasks.get(role.name, role.task), self.act_tokens).bind_tools([schema], tool_choice=choice,
                                                                       parallel_tool_calls=False)  # fmt: skip
                ai: AIMessage = llm.invoke(messages)
            except Exception as e:  # the API refused the model call (403 stack, 429, ...): report, go on
                record["error"] = _api_error(e)
                self.echo(f"[{role.name}] model call refused: {record['error']}")
                return {"steps": [record], "data": {}}
            record["model"] = (ai.response_metadata or {}).get("model_name")
            if not ai.tool_calls:
                record["error"] = "the model answered without calling its tool"
                self.echo(f"[{role.name}] {record['error']}: {str(ai.content)[:80]!r}")
                return {"steps": [record], "data": {}}
            call = ai.tool_calls[0]
            record["args"] = call["args"]
            try:
                result, found = run(**call["args"])
            except TypeError as e:  # arguments that do not fit the tool (auto mode, no grammar)
                result, found = f"bad arguments: {e}", {}
            record["result"] = result
            self.echo(f"[{role.name}] {name}({json.dumps(call['args'])}) -> {result[:160]}")
            if any(k.endswith("_error") for k in found):
                record["error"] = result
            try:
                note = self._llm(self.tasks.get(role.name, role.task), self.note_tokens).invoke(
                    [
                        *messages,
                        ai,
                        ToolMessage(result, tool_call_id=call["id"]),
                        HumanMessage("In one short sentence, what does this answer mean for the plan?"),
                    ]
                )
                record["note"] = str(note.content).strip()
            except Exception as e:
                record["note"] = f"(no note: {_api_error(e)})"
            self.echo(f"[{role.name}] note: {record['note'][:120]!r}")
            return {"steps": [record], "data": found}

        return node

    def graph(self) -> Any:
        from langgraph.graph import END, START, StateGraph

        g = StateGraph(CrewState)
        names = []
        for role in self.roles():
            g.add_node(role.name, self.step(role))  # type: ignore[call-overload]
            names.append(role.name)
        for a, b in zip([START, *names], [*names, END], strict=True):
            g.add_edge(a, b)
        return g.compile()

    def run(self) -> dict[str, Any]:
        """Run the six roles in order; returns ``{"steps", "data", "final", "api_calls"}``."""
        state = self.graph().invoke({"steps": [], "data": {}})
        final = final_message(self.brand, self.retailer, state["steps"], state["data"])
        self.echo("\n" + final)
        return {"steps": state["steps"], "data": state["data"], "final": final, "api_calls": self.api.calls}


def final_message(brand: str, retailer: str, steps: list[dict[str, Any]], data: dict[str, Any]) -> str:
    """The crew's report: the comparison's measured numbers (or why there are none) and each refusal."""
    lines = [f"Crew report for {brand} at {retailer}"]
    c = data.get("comparison")
    if c is None:
        lines.append(f"No comparison: {data.get('comparison_error', 'the planner did not run')}")
    else:
        f, cr, d = c["full"]["score"], c["cleanroom"]["score"], c["deltas"]
        lines.append(f"{'metric':22s}{'full data':>14s}{'clean room':>14s}{'delta':>14s}")
        for k in METRICS:
            lines.append(f"{k:22s}{f[k]:>14,.3f}{cr[k]:>14,.3f}{d[k]:>14,.3f}")
        lines.append(f"verdict: {c['verdict']}")
    if "harmonization" in data:
        h = data["harmonization"]
        lines.append(
            f"harmonised: {len(h['mapping'])} fields mapped, unmapped: {', '.join(h['unmapped']) or 'none'}"
        )
    if "governance" in data:
        v = data["governance"]
        lines.append(f"ad lines approved: {sum(x['ok'] for x in v)} of {len(v)}")
    p = data.get("privacy")
    if isinstance(p, dict) and p.get("dp"):
        lines.append(
            f"privacy budget at {retailer}: epsilon spent {p['epsilon_spent']} of {p['epsilon_budget']}"
        )
    for s in steps:
        if "error" in s:
            lines.append(f"refused at {s['role']}: {s['error']}")
    return "\n".join(lines)


def _fn(name: str, description: str, props: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": list(props)},
        },
    }


def _api_error(e: Exception) -> str:
    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)
    msg = body.get("message") if isinstance(body, dict) else None
    return f"{status}: {msg or e}" if status else f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.agents.crew", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="rmn serve's base URL")
    p.add_argument(
        "--key", default="demo-brewmax-key", help="the tenant's API key (default: the demo brand's)"
    )
    p.add_argument("--brand", default="brewmax", help="manufacturer to plan for (the tenant's own)")
    p.add_argument("--retailer", default="acme", help="retailer whose clean room is used")
    p.add_argument("--budget", type=float, default=5000.0, help="media budget ($)")
    p.add_argument("--seed", type=int, default=None, help="market seed (default: the server's)")
    p.add_argument("--tool-choice", choices=["forced", "auto"], default="forced",
                   help="forced: each agent must call its tool (deterministic); auto: the model decides")  # fmt: skip
    p.add_argument("--local", action="store_true",
                   help="start the federated demo app here (after `make demo`), run the crew, stop it")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the run as JSON at the end")
    a = p.parse_args(argv)

    def go(url: str) -> dict[str, Any]:
        crew = Crew(Api(url, a.key), a.brand, a.retailer, a.budget, a.seed, tool_choice=a.tool_choice)
        return crew.run()

    try:
        if a.local:
            from serving.demo.defaults import demo_config
            from serving.local import local_app

            with local_app(demo_config()) as url:
                out = go(url)
        else:
            out = go(a.url)
    except httpx.HTTPError as e:
        print(f"crew: cannot reach {a.url}: {e} (start `rmn serve --config deploy/rmn-federated-cpu.yaml`, "
              "or pass --local)", file=sys.stderr)  # fmt: skip
        return 2
    if a.json:
        print(json.dumps({k: v for k, v in out.items() if k != "data"}, indent=2, default=str))
    return 0 if "comparison" in out["data"] else 1


if __name__ == "__main__":
    sys.exit(main())
