"""``rmn cleanroom load|query|budget|audit``: a retailer's clean room from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _room(args: argparse.Namespace, query: object = None):  # type: ignore[no-untyped-def]
    """The room of ``--db`` under ``--policy``; an undeclared ``--tenant`` is refused, and audited in the room
    like the service's refusals when ``query`` is given (what it asked)."""
    from cleanroom import CleanRoom, CleanRoomPolicy
    from serving.config import load_yaml_model

    policy = load_yaml_model(args.policy, CleanRoomPolicy)
    options = json.loads(args.storage_options) if getattr(args, "storage_options", None) else None
    room = CleanRoom(Path(args.db), policy, storage_options=options, memory_limit=args.memory_limit)
    tenant = getattr(args, "tenant", None)
    if tenant is not None and not policy.declares(tenant):
        reason = (
            f"tenant {tenant!r} is not declared in {args.policy} (brand_owners, unscoped_tenants or "
            "trusted_tenants): the CLI takes a tenant's identity and scope from the policy"
        )
        if query is not None:
            room.audit_refusal(tenant, query, reason)
        room.close()
        raise ValueError(reason)
    return room


def _cmd_cleanroom_load(args: argparse.Namespace) -> int:
    room = _room(args)
    for f in args.files:
        r = room.load_file(f)
        if r.already_loaded:
            print(f"{f}: already loaded as batch {r.batch} (sha256 {r.sha256[:12]}): nothing loaded")
        else:
            dup = f", {r.duplicate_events} duplicate event(s) skipped" if r.duplicate_events else ""
            print(f"{f}: {r.rows} rows loaded as batch {r.batch}{dup}")
    return 0


def _cmd_cleanroom_attach(args: argparse.Namespace) -> int:
    room = _room(args)
    for source in args.sources:
        r = room.attach(source, progress=True)
        if r.already_loaded:
            print(f"{source}: already attached or loaded as batch {r.batch}: nothing done")
        else:
            print(
                f"{source}: {r.rows} rows attached as batch {r.batch} (read in place, sha256 {r.sha256[:12]})"
            )
    return 0


def _cmd_cleanroom_query(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pydantic import ValidationError

    from cleanroom import Query

    text = Path(args.query[1:]).read_text() if args.query.startswith("@") else args.query
    room = _room(args, text)
    try:
        q = Query.model_validate_json(text)
    except ValidationError as e:
        reason = f"invalid query: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}"
        room.audit_refusal(args.tenant, text, reason)  # audited like the service's refusals
        raise ValueError(reason) from e
    result = asdict(room.query(args.tenant, q))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    for cell in result["cells"]:
        print("  ".join(f"{k}={v}" for k, v in cell.items()))
    suppressed = result["suppressed_cells"]
    print(
        f"{len(result['cells'])} cells released"
        + (
            f", {suppressed} suppressed"
            if suppressed is not None
            else f" ({'noisy: ' if result.get('noisy') else ''}{result['suppression_reason']})"
        )
        + (f", epsilon spent {result['epsilon_spent']}" if result.get("epsilon_spent") else "")
    )
    return 0


def _cmd_cleanroom_budget(args: argparse.Namespace) -> int:
    budget = _room(args).budget(args.tenant, room_view=True)  # the operator of the room's file
    if args.json:
        print(json.dumps(budget, indent=2))
    else:
        print("  ".join(f"{k}={v}" for k, v in budget.items()))
    return 0


def _cmd_cleanroom_audit(args: argparse.Namespace) -> int:
    from cleanroom.audit import QueryAudit

    entries = QueryAudit(Path(args.db).with_suffix(".audit.jsonl")).entries()[-args.tail :]
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True))
        return 0
    for entry in entries:  # JSON lines: one entry per line
        print(json.dumps(entry, sort_keys=True))
    return 0


def add_cleanroom_commands(sub: Any) -> None:
    """Register the ``cleanroom`` verbs on the top-level subparsers."""
    cr = sub.add_parser("cleanroom", help="a retailer's clean room (DuckDB)").add_subparsers(
        dest="cleanroom_verb", required=True
    )

    def room_args(x: argparse.ArgumentParser, policy: bool = True) -> argparse.ArgumentParser:
        x.add_argument("--db", required=True, help="the retailer's DuckDB file")
        if policy:
            x.add_argument("--policy", required=True, help="the retailer's clean-room policy (YAML)")
            x.add_argument(
                "--memory-limit", help="DuckDB's memory limit, e.g. 4GB (it spills to disk beyond)"
            )
            x.add_argument(
                "--storage-options",
                help='JSON fsspec options for attached object-store files, e.g. \'{"endpoint_url": "…"}\'',
            )
        return x

    cl = room_args(cr.add_parser("load", help="append CSV/Parquet files in the documented schema"))
    cl.add_argument("files", nargs="+")
    cl.set_defaults(fn=_cmd_cleanroom_load)
    ct = room_args(
        cr.add_parser(
            "attach",
            help="read Parquet files in place (a folder, glob or s3:// prefix; partitioned by date or not) "
            "where the policy allows",
        )
    )
    ct.add_argument("sources", nargs="+", help="a .parquet file, a folder, a glob or an object-store URL")
    ct.set_defaults(fn=_cmd_cleanroom_attach)
    cq = room_args(cr.add_parser("query", help="run a structured query as a tenant; prints released cells"))
    cq.add_argument(
        "--tenant", required=True, help="a tenant declared in the policy (its scope comes from there)"
    )
    cq.add_argument("--query", required=True, help="query JSON, or @file.json")
    cq.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    cq.set_defaults(fn=_cmd_cleanroom_query)
    cb = room_args(cr.add_parser("budget", help="a tenant's differential-privacy budget (epsilon ledger)"))
    cb.add_argument("--tenant", required=True, help="a tenant declared in the policy")
    cb.add_argument("--json", action="store_true", help="print JSON instead of text")
    cb.set_defaults(fn=_cmd_cleanroom_budget)
    ca = room_args(cr.add_parser("audit", help="print the audit log (JSON lines)"), policy=False)
    ca.add_argument("--tail", type=int, default=50, help="last N entries")
    ca.add_argument("--json", action="store_true", help="print one JSON array instead of JSON lines")
    ca.set_defaults(fn=_cmd_cleanroom_audit)
