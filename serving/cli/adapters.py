"""``rmn adapters list|show|register|validate|compose|gc|train``: the adapter registry from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from adapters import AdapterRegistry
    from serving.demo.defaults import home

    return AdapterRegistry(args.root or home() / "adapters", max_rank=args.max_rank)


def _cmd_adapters_list(args: argparse.Namespace) -> int:
    manifests = _registry(args).list()
    if args.json:
        print(json.dumps([m.model_dump(mode="json") for m in manifests], indent=2))
        return 0
    for m in manifests:
        print(f"{m.id:24} v{m.version:6} {m.kind.value:13} owner={m.owner:12} r={m.rank:<3} {m.description}")
    return 0


def _cmd_adapters_show(args: argparse.Namespace) -> int:
    m = _registry(args).get(args.id, args.version)
    if args.json:
        print(m.model_dump_json(indent=2))
    else:
        for key, value in m.model_dump(mode="json").items():
            print(f"{key:20} {value}")
    return 0


_MANIFEST_ARGS = ("id", "version", "kind", "owner", "visibility", "description")


def _register(args: argparse.Namespace, src: Path | str, base: Path) -> int:
    """Register ``src`` checked against the base model in ``base``, manifest fields from ``args``."""
    fields = {k: getattr(args, k) for k in _MANIFEST_ARGS}
    m = _registry(args).register(src, base_model_dir=base, base_model=base.name, **fields)
    print(f"registered {m.id} v{m.version} (rank {m.rank}, sha256 {m.sha256[:12]})")
    return 0


def _cmd_adapters_register(args: argparse.Namespace) -> int:
    return _register(args, args.path, Path(args.base_model_dir))


def _cmd_adapters_gc(args: argparse.Namespace) -> int:
    print(f"removed {_registry(args).gc()} leftovers of interrupted registrations from the registry")
    cache = _cache(args)
    print(f"removed {cache.gc()} composite cache entries (bound {cache.max_bytes} bytes)")
    return 0


def _cache(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import tempfile

    from adapters.cache import CompositeCache

    root = Path(args.cache) if args.cache else Path(tempfile.gettempdir()) / "rmn-composites"
    return CompositeCache(
        root, _registry(args), max_bytes=args.cache_max_bytes, max_rank=args.max_rank, compress=args.compress
    )


def _cmd_adapters_validate(args: argparse.Namespace) -> int:
    import tempfile

    from adapters import AdapterRegistry

    with tempfile.TemporaryDirectory() as tmp:  # a dry-run registration: every check, nothing kept
        AdapterRegistry(tmp, max_rank=args.max_rank).register(
            args.path,
            base_model_dir=Path(args.base_model_dir),
            id="candidate",
            kind="task",
            owner="-",
            base_model=Path(args.base_model_dir).name,
        )
    print(f"{args.path}: valid for {args.base_model_dir}")
    return 0


def _cmd_adapters_compose(args: argparse.Namespace) -> int:
    import time

    from adapters.cache import resolve
    from adapters.stack import parse_stack

    cache = _cache(args)
    stack = resolve(cache.registry, parse_stack(args.stack))
    started = time.perf_counter()
    path = cache.get_or_build(stack)
    info = cache.info(stack.composite_id)
    info.update(path=str(path), seconds=round(time.perf_counter() - started, 4))
    print(json.dumps(info, indent=2))
    return 0


def _cmd_adapters_train(args: argparse.Namespace) -> int:
    import tempfile

    from adapters.corpus import read_pairs
    from adapters.training import train_lora

    pairs = read_pairs(Path(args.data))
    base = Path(args.base_model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        report = train_lora(
            base,
            pairs,
            tmp,
            rank=args.rank,
            alpha=args.alpha,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            target_modules=args.target_modules.split(","),
            desc=f"train {args.id}",
        )
        print(
            f"held-out loss: base {report.heldout_loss_base:.3f} -> adapter {report.heldout_loss_adapter:.3f}"
        )
        return _register(args, tmp, base)


def json_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--json`` (machine-readable output) to a read verb."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _registry_args(x: argparse.ArgumentParser) -> argparse.ArgumentParser:
    x.add_argument(
        "--root",
        help="registry directory or object-store URL, e.g. s3://bucket/adapters (credentials and "
        "AWS_ENDPOINT_URL from the environment; default: $RMN_HOME/adapters)",
    )
    x.add_argument("--max-rank", type=int, default=64, help="largest rank accepted")
    return x


def _manifest_args(x: argparse.ArgumentParser) -> None:
    x.add_argument(
        "--base-model-dir", required=True, help="base model directory (shapes and revision are checked)"
    )
    x.add_argument("--id", required=True, help="adapter id, [a-z0-9_-]")
    x.add_argument("--version", default="1", help="version; never overwrites an existing one")
    x.add_argument("--kind", required=True, choices=["industry", "retailer", "manufacturer", "task"])
    x.add_argument("--owner", required=True, help="owning tenant")
    x.add_argument("--visibility", default="private", choices=["public", "private"])
    x.add_argument("--description", default="")


def _cache_args(x: argparse.ArgumentParser) -> argparse.ArgumentParser:
    x.add_argument("--cache", help="composite cache directory (default: <temp dir>/rmn-composites)")
    x.add_argument("--cache-max-bytes", type=int, default=2 << 30, help="cache size bound (LRU beyond)")
    x.add_argument("--compress", action="store_true", help="SVD-compress stacks above --max-rank")
    return x


def _add_train(a: argparse._SubParsersAction) -> None:
    t = _registry_args(
        a.add_parser("train", help="fine-tune a LoRA with PEFT on a JSONL corpus and register it")
    )
    t.add_argument("--data", required=True, help='JSONL, one {"prompt": ..., "response": ...} per line')
    _manifest_args(t)
    t.add_argument("--rank", type=int, default=8)
    t.add_argument("--alpha", type=int, default=16)
    t.add_argument("--target-modules", default="q_proj,v_proj", help="comma-separated")
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_cmd_adapters_train)


def add_adapters_commands(sub: argparse._SubParsersAction) -> None:
    """Attach ``rmn adapters ...`` to the top-level parser."""
    a = sub.add_parser("adapters", help="the adapter registry").add_subparsers(
        dest="adapters_verb", required=True
    )
    ls = _registry_args(a.add_parser("list", help="latest version of every adapter"))
    json_flag(ls).set_defaults(fn=_cmd_adapters_list)
    sh = json_flag(_registry_args(a.add_parser("show", help="one adapter's manifest")))
    sh.add_argument("id")
    sh.add_argument("--version")
    sh.set_defaults(fn=_cmd_adapters_show)
    r = _registry_args(a.add_parser("register", help="validate a PEFT adapter directory and register it"))
    r.add_argument("path", help="directory with adapter_config.json + adapter_model.safetensors")
    _manifest_args(r)
    r.set_defaults(fn=_cmd_adapters_register)
    gc = a.add_parser("gc", help="remove interrupted registrations, trim the composite cache")
    _cache_args(_registry_args(gc)).set_defaults(fn=_cmd_adapters_gc)
    v = _registry_args(
        a.add_parser("validate", help="run every registration check on a PEFT directory, keep nothing")
    )
    v.add_argument("path", help="directory with adapter_config.json + adapter_model.safetensors")
    v.add_argument("--base-model-dir", required=True, help="base model directory to check shapes against")
    v.set_defaults(fn=_cmd_adapters_validate)
    c = a.add_parser("compose", help="compose a stack exactly (cached); prints id and path")
    c = _cache_args(_registry_args(c))
    c.add_argument("stack", help="e.g. retail_media+acme_retail+brand_brewmax*0.5+task_creative")
    c.set_defaults(fn=_cmd_adapters_compose)
    _add_train(a)
