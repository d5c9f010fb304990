"""The ``rmn`` command line. Every verb has ``--help``; errors print a message and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serving.cli.adapters import add_adapters_commands
from serving.cli.cleanroom import add_cleanroom_commands
from serving.cli.model import add_model_commands
from serving.cli.planning import add_planning_commands


def _cmd_serve(args: argparse.Namespace) -> int:
    import time

    from serving.config import load_config
    from serving.demo.defaults import default_config
    from serving.local import local_app, stop_on_signals

    cfg = load_config(args.config) if args.config else default_config()
    if args.model is not None:  # your own model: with the embedded defaults, its own chat template too
        from serving.config import ModelConfig

        own = (
            cfg.model.model_copy(update={"path": Path(args.model).resolve()})
            if args.config
            else ModelConfig(path=Path(args.model).resolve())
        )
        cfg = cfg.model_copy(update={"model": own})
    if args.port is not None or args.host is not None:
        http = cfg.http.model_copy(
            update={k: v for k, v in (("port", args.port), ("host", args.host)) if v is not None}
        )
        cfg = cfg.model_copy(update={"http": http})
    if not (cfg.model.path / "config.json").is_file():
        raise SystemExit(
            f"rmn serve: model directory {cfg.model.path} has no config.json "
            "(run `rmn model prepare` or set model.path in the config)"
        )
    if cfg.model.tool_call_parser is not None:
        from serving.engines.vllm_engine import check_tool_parser

        try:  # before Ray starts: a typo should not cost a cluster start
            check_tool_parser(cfg.model.tool_call_parser)
        except ValueError as e:
            raise SystemExit(f"rmn serve: {e}") from e
    if cfg.federation is not None and cfg.federation.keys_file is not None:
        from federation.keys import KeyFileError

        try:  # the tenants' key file, as the router will read it
            cfg.federation.directory()
        except KeyFileError as e:
            raise SystemExit(f"rmn serve: {e}") from e
    with local_app(cfg) as url:
        stop_on_signals()  # after ray.init, which installs its own SIGTERM handler
        print(
            f"rmn-lora serving at {url}/v1  (models: {url}/v1/models, health: {url}/healthz, ready: {url}/readyz)"
        )
        print("Ctrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("shutting down (finishing in-flight requests)")
    return 0


def _cmd_tenants_hash_key(args: argparse.Namespace) -> int:
    from federation.tenants import hash_key

    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        raise ValueError("empty API key")
    print(hash_key(key))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from serving.demo.run import run_demo

    return run_demo(keep_serving=args.keep_serving)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rmn-lora")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree (exposed for tests)."""
    p = argparse.ArgumentParser(
        prog="rmn", description="rmn-lora: multi-LoRA serving for retail media networks"
    )
    p.add_argument("--version", action="version", version=f"rmn {_version()}")
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser("serve", help="start a local Ray cluster and the app; Ctrl-C stops both")
    s.add_argument("--config", help="rmn YAML config (default: embedded demo config)")
    s.add_argument("--host", help="override http.host")
    s.add_argument("--port", type=int, help="override http.port")
    s.add_argument(
        "--model", help="override model.path: a Hugging Face model directory (see `rmn model register`)"
    )
    s.set_defaults(fn=_cmd_serve)

    add_model_commands(sub)

    add_adapters_commands(sub)

    add_cleanroom_commands(sub)

    tn = sub.add_parser("tenants", help="tenant helpers").add_subparsers(dest="tenants_verb", required=True)
    hk = tn.add_parser("hash-key", help="print the sha256 to put in federation.tenants[].api_key_sha256")
    hk.add_argument("key", nargs="?", help="the API key (default: read one line from stdin)")
    hk.set_defaults(fn=_cmd_tenants_hash_key)

    add_planning_commands(sub)

    d = sub.add_parser("demo", help="prepare model, adapters, data; serve; ask each adapter; compare plans")
    d.add_argument(
        "--keep-serving", action="store_true", help="keep serving after the answers (Ctrl-C stops)"
    )
    d.set_defaults(fn=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rmn`` console script: 0 done, 1 refused or failed (the message says why),
    2 a usage error (argparse), 130 interrupted (Ctrl-C before the command set its own handling)."""
    from adapters import AdapterError
    from cleanroom import CleanRoomError
    from serving.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, AdapterError, CleanRoomError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"rmn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # e.g. Ctrl-C while the app is still starting: stopped, no traceback
        print("rmn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
