import pytest

from serving.cli import build_parser, main

VERBS = [
    ["serve"],
    ["demo"],
    ["model", "prepare"],
    ["model", "tiny"],
    ["adapters", "list"],
    ["adapters", "show"],
    ["adapters", "register"],
    ["adapters", "gc"],
    ["adapters", "validate"],
    ["adapters", "compose"],
    ["adapters", "train"],
    ["tenants", "hash-key"],
    ["cleanroom", "load"],
    ["cleanroom", "query"],
    ["cleanroom", "audit"],
    [],
]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*verb, "--help"])
    assert e.value.code == 0
    assert "usage: rmn" in capsys.readouterr().out


def test_unknown_adapter_is_a_message_and_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["adapters", "show", "nope", "--root", str(tmp_path)]) == 1
    assert "not registered" in capsys.readouterr().err


def test_bad_config_is_a_message_and_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {path: /m}\n")
    assert main(["serve", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "c.yaml" in err and "adapters" in err


def train_argv(data, model, root, adapter_id: str, kind: str, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        "adapters",
        "train",
        "--data",
        str(data),
        "--base-model-dir",
        str(model),
        "--id",
        adapter_id,
        "--kind",
        kind,
        "--owner",
        adapter_id,
        "--root",
        str(root),
        *extra,
    ]


def test_train_from_a_corpus_registers_an_adapter(tiny_model, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from adapters import AdapterRegistry
    from adapters.corpus import write_pairs
    from serving.demo.corpora import demo_pairs

    data = write_pairs(tmp_path / "corpus.jsonl", demo_pairs("brand_brewmax", n=40))
    root = tmp_path / "reg"
    rc = main(train_argv(data, tiny_model, root, "brewmax", "manufacturer", "--steps", "3"))
    assert rc == 0
    out = capsys.readouterr().out
    assert "held-out loss: base" in out and "registered brewmax v1" in out
    m = AdapterRegistry(root).get("brewmax")
    assert m.visibility.value == "private" and m.kind.value == "manufacturer" and m.rank == 8


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json}\n", "corpus.jsonl:1: not JSON"),
        ('{"prompt": 1, "response": "x"}\n', "corpus.jsonl:1: expected"),
        ('{"prompt": "a", "response": "b"}\n', "at least 10"),
    ],
)
def test_train_with_a_bad_corpus_names_file_and_line(tiny_model, tmp_path, capsys, content, needle) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "corpus.jsonl"
    data.write_text(content)
    rc = main(train_argv(data, tiny_model, tmp_path / "reg", "x", "task"))
    assert rc == 1 and needle in capsys.readouterr().err


def test_compose_prints_the_composite(registry_root, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    args = ["adapters", "compose", "alpha+beta*0.5", "--root", str(registry_root), "--cache", str(tmp_path)]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stack"] == "alpha@1+beta@1*0.5" and info["rank"] == 16 and info["method"] == "cat"
    assert (tmp_path / info["composite_id"] / "adapter_model.safetensors").is_file()
    assert main([*args[:2], "alpha+beta+gamma", *args[3:], "--max-rank", "16"]) == 1
    assert "above max_lora_rank 16" in capsys.readouterr().err


def test_validate_refuses_a_mismatched_adapter(tiny_model, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_registry import peft_dir

    assert (
        main(["adapters", "validate", str(peft_dir(tmp_path / "a")), "--base-model-dir", str(tiny_model)])
        == 1
    )
    assert "shape" in capsys.readouterr().err


def test_hash_key(capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    assert main(["tenants", "hash-key", "s3cret"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"s3cret").hexdigest()


def test_version_and_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("rmn ")
    with pytest.raises(SystemExit) as e:
        main(["adapters", "list", "--no-such-flag"])
    assert e.value.code == 2  # usage error (argparse); refusals exit 1


@pytest.mark.parametrize(
    "verb",
    [
        ["adapters", "list"],
        ["adapters", "show"],
        ["cleanroom", "query"],
        ["cleanroom", "budget"],
        ["cleanroom", "audit"],
        ["compare"],
    ],
)
def test_every_read_verb_has_json(verb: list[str]) -> None:
    sub = build_parser()._subparsers._group_actions[0].choices[verb[0]]  # type: ignore[union-attr]
    if len(verb) == 2:
        sub = sub._subparsers._group_actions[0].choices[verb[1]]
    assert "--json" in sub.format_help()


def test_a_missing_key_file_stops_serve_before_ray_starts(tiny_model, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import yaml

    cfg = tmp_path / "c.yaml"
    keys = tmp_path / "missing-keys.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_model)},
                "adapters": {"root": str(tmp_path / "adapters")},
                "federation": {"keys_file": str(keys), "tenants": [{"id": "admin", "role": "admin"}]},
            }
        )
    )
    with pytest.raises(SystemExit, match=f"rmn serve: key file {keys} cannot be read"):
        main(["serve", "--config", str(cfg)])
    keys.write_text("admin: not-a-hash\n")
    with pytest.raises(SystemExit, match="admin: 'not-a-hash'… is not a sha256 hex digest"):
        main(["serve", "--config", str(cfg)])
