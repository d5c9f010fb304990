"""``rmn compare`` and ``rmn market corpus``: planning over the synthetic market from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cmd_plan_files(args: argparse.Namespace) -> int:
    from planning.brand_files import plan_from_files
    from planning.planner import PlanRequest
    from serving.cli.report import format_files_plan

    fields = {
        "budget": args.budget,
        "scenario": args.scenario,
        "target": args.target,
        "roas_floor": args.roas_floor,
        "exploration_share": args.exploration_share,
        "max_cell_share": args.max_cell_share,
    }
    req = PlanRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    if not args.cleanroom:
        body = plan_from_files(
            Path(args.data), req, args.horizon_days, args.holdout_days, None, args.manufacturer
        )
    elif args.url:
        body = plan_from_files(
            Path(args.data), req, args.horizon_days, args.holdout_days, _remote_ask(args), args.manufacturer
        )
    else:
        from planning.workflow import room_asker

        room = _open_room(args)
        try:
            brand = args.manufacturer or Path(args.data).name
            ask = room_asker(room, brand, brand)
            body = plan_from_files(
                Path(args.data), req, args.horizon_days, args.holdout_days, ask, args.manufacturer
            )
        finally:
            room.close()
    if args.report:
        write_report(body, Path(args.report))
    print(json.dumps(body, indent=2) if args.json else format_files_plan(body))
    return 0


def error_message(r: Any) -> str:
    """The reason of a server's error answer (its ``error.message``, else the start of the body)."""
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(r.text[:500])


def _remote_ask(args: argparse.Namespace) -> Any:
    """``ask(query)`` through the server's ``POST /v1/cleanroom/query`` as the key's tenant."""
    import os

    import httpx

    from planning.workflow import ComparisonError
    from serving.errors import Relayed

    key = args.key or os.environ.get("RMN_API_KEY", "")
    url = f"{args.url.rstrip('/')}/v1/cleanroom/query"

    async def ask(q: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=args.timeout) as client:
            try:
                r = await client.post(
                    url,
                    json={"retailer": args.cleanroom, "query": q},
                    headers={"authorization": f"Bearer {key}"},
                )
            except httpx.HTTPError as e:
                raise ComparisonError(f"cannot reach {args.url}: {e}") from e
        if r.status_code != 200:
            refusal = Relayed(f"HTTP {r.status_code}: {error_message(r)}", r.status_code, "clean_room")
            raise ComparisonError(f"clean room: {refusal}", refusal)
        answer: dict[str, Any] = r.json()
        return answer

    return ask


def _open_room(args: argparse.Namespace) -> Any:
    """The config's clean room of retailer ``--cleanroom``, opened in this process."""
    from cleanroom import CleanRoom
    from serving.config import load_config
    from serving.demo.defaults import demo_config

    cfg = load_config(args.config) if args.config else demo_config()
    rooms = {r.policy.retailer: r for r in (cfg.cleanroom.retailers if cfg.cleanroom else [])}
    entry = rooms.get(args.cleanroom)
    if entry is None:
        raise ValueError(
            f"--cleanroom {args.cleanroom!r}: the config has no such clean room (has: {sorted(rooms)})"
        )
    if not entry.db_path.exists():
        raise ValueError(
            f"--cleanroom {args.cleanroom!r}: {entry.db_path} does not exist (load the retailer's data first)"
        )
    return CleanRoom(
        entry.db_path, entry.policy, storage_options=entry.storage_options, memory_limit=entry.memory_limit
    )


def _cmd_compare(args: argparse.Namespace) -> int:
    from planning.compare import CompareRequest
    from serving.cli.report import format_comparison

    if args.data:
        return _cmd_plan_files(args)
    if args.cleanroom:
        raise ValueError(
            "--cleanroom goes with --data (the synthetic comparison always uses the market's room)"
        )
    if not args.manufacturer:
        raise ValueError("--manufacturer is required (or plan from your own files with --data DIR)")

    fields = {
        "budget": args.budget,
        "scenario": args.scenario,
        "target": args.target,
        "cleanroom_margins": False if args.cleanroom_only else None,
        "roas_floor": args.roas_floor,
        "exploration_share": args.exploration_share,
        "max_cell_share": args.max_cell_share,
        "manufacturer": args.manufacturer,
        "retailer": args.retailer,
        "seed": args.seed,
        "seeds": args.seeds,
        "creatives": args.creatives,
    }
    req = CompareRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    if args.url:
        import os

        import httpx

        key = args.key or os.environ.get("RMN_API_KEY", "")
        try:
            r = httpx.post(
                f"{args.url.rstrip('/')}/v1/plans/compare",
                json=req.model_dump(exclude_none=True),
                headers={"authorization": f"Bearer {key}"},
                timeout=args.timeout,
            )
        except httpx.HTTPError as e:
            raise ValueError(f"cannot reach {args.url}: {e}") from e
        if r.status_code != 200:
            raise ValueError(f"HTTP {r.status_code}: {error_message(r)}")
        body = r.json()
    else:
        import tempfile

        from planning.workflow import compare_local
        from serving.config import load_config
        from serving.demo.defaults import demo_config

        cfg = load_config(args.config) if args.config else demo_config()
        if cfg.comparison is None:
            raise ValueError("the config has no comparison section")
        with tempfile.TemporaryDirectory() as work:
            body = compare_local(cfg.comparison.market, req, cfg.market_policy(), Path(work))
    if args.report:
        write_report(body, Path(args.report))
    print(json.dumps(body, indent=2) if args.json else format_comparison(body))
    return 0


def write_report(body: dict[str, Any], path: Path) -> None:
    """The comparison as ``path``: HTML or PDF by its suffix (planning/report.py)."""
    from planning.report import render

    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("html", "pdf"):
        raise ValueError(f"--report {path}: the file must end in .html or .pdf")
    try:
        path.write_bytes(render(body, fmt)[0])
    except OSError as e:
        raise ValueError(f"--report {path}: {e.strerror or e}") from e


def _cmd_market_corpus(args: argparse.Namespace) -> int:
    from adapters.corpus import write_pairs
    from planning.market import MarketConfig, generate
    from planning.market_corpus import corpus
    from serving.config import load_config
    from serving.demo.defaults import demo_config

    cfg = load_config(args.config) if args.config else demo_config()
    market_cfg = cfg.comparison.market if cfg.comparison else MarketConfig()
    if args.seed is not None:
        market_cfg = market_cfg.model_copy(update={"seed": args.seed})
    try:
        pairs = corpus(generate(market_cfg), args.kind, args.owner)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from e
    print(f"{write_pairs(Path(args.out), pairs)}: {len(pairs)} pairs")
    return 0


def add_planning_commands(sub: Any) -> None:
    """Register ``compare`` and ``market`` on the top-level subparsers."""
    cp = sub.add_parser(
        "compare",
        help="plan a budget with full data and through the clean room, score both on the market's truth",
        description="Against a server (--url, --key or $RMN_API_KEY): POST /v1/plans/compare, with the "
        "rationale and ad lines written through the composed adapters. Without --url: the same plans "
        "and scores in this process (no Ray, no LLM text). With --data DIR: plan from a brand's own files "
        "(how much to spend and where) and backtest the curves on held-out days.",
    )
    cp.add_argument(
        "--budget",
        type=float,
        required=True,
        help="spend over the plan horizon ($): the cap, or what is spent with --scenario fixed_budget",
    )
    cp.add_argument(
        "--scenario",
        choices=["profit_optimal", "fixed_budget", "target_roas", "target_mroas"],
        default=None,
        help="profit_optimal (default): spend only what returns more than it costs, up to the budget; "
        "fixed_budget: spend it all; target_roas / target_mroas: with --target",
    )
    cp.add_argument("--target", type=float, default=None, help="the iROAS target of the target_* scenarios")
    cp.add_argument(
        "--cleanroom-only",
        action="store_true",
        help="the clean-room plan without the brand's own margins and stock (the third arm)",
    )
    cp.add_argument("--manufacturer", default=None, help="the brand planning (e.g. brewmax; not with --data)")
    cp.add_argument(
        "--data",
        default=None,
        help="plan from a brand's own files instead of the synthetic market: a directory with products, sales "
        "and media as CSV or Parquet (docs/planning.md); evaluated by a holdout backtest",
    )
    cp.add_argument("--horizon-days", type=int, default=28, help="with --data: days the plan covers")
    cp.add_argument(
        "--holdout-days", type=int, default=None, help="with --data: days held out (default: a quarter)"
    )
    cp.add_argument("--retailer", default=None, help="retailer (default: the market's)")
    cp.add_argument(
        "--cleanroom",
        default=None,
        metavar="RETAILER",
        help="with --data: also plan through RETAILER's clean room (the server's with --url, else the config's, "
        "opened here) as the brand (--manufacturer: its name in the retailer's data), both sides backtested",
    )
    cp.add_argument("--roas-floor", type=float, default=None, help="minimum predicted iROAS")
    cp.add_argument(
        "--exploration-share", type=float, default=None, help="budget share spread over all cells"
    )
    cp.add_argument(
        "--max-cell-share",
        type=float,
        default=None,
        help="most of the budget one cell may take (default: 0.25 with --scenario fixed_budget, no cap otherwise)",
    )
    cp.add_argument("--seed", type=int, default=None, help="market seed (default: the config's)")
    cp.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="compare on this many markets (consecutive seeds): mean difference, 95 %% interval, win rate",
    )
    cp.add_argument("--creatives", type=int, default=None, help="ad lines to write (server mode)")
    cp.add_argument("--url", default=None, help="server base URL, e.g. http://127.0.0.1:8000")
    cp.add_argument("--key", default=None, help="API key (default: $RMN_API_KEY)")
    cp.add_argument("--config", default=None, help="local mode: app config with a comparison section")
    cp.add_argument("--timeout", type=float, default=300, help="server mode: seconds to wait")
    cp.add_argument(
        "--json", action="store_true", help="print the ComparisonResult JSON instead of the table"
    )
    cp.add_argument(
        "--report",
        default=None,
        metavar="FILE",
        help="also write the comparison (or, with --data, the plan and its backtest) as a report: FILE.html (one "
        "page, inline charts) or FILE.pdf",
    )
    cp.set_defaults(fn=_cmd_compare)

    mk = sub.add_parser("market", help="the synthetic market").add_subparsers(
        dest="market_verb", required=True
    )
    mc = mk.add_parser(
        "corpus", help="training pairs (JSONL) derived from the market, for `rmn adapters train`"
    )
    mc.add_argument("--kind", required=True, choices=["industry", "retailer", "manufacturer", "task"])
    mc.add_argument("--owner", default=None, help="the brand (manufacturer and task corpora)")
    mc.add_argument("--out", required=True, help="JSONL file to write")
    mc.add_argument("--seed", type=int, default=None, help="market seed (default: the config's)")
    mc.add_argument("--config", default=None, help="app config with a comparison.market section")
    mc.set_defaults(fn=_cmd_market_corpus)
