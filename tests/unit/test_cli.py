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
    [],
]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*verb, "--help"])
    assert e.value.code == 0
    assert "usage: rmn" in capsys.readouterr().out


def test_unknown_adapter_is_a_message_and_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["adapters", "show", "nope", "--root", str(tmp_path)]) == 2
    assert "not registered" in capsys.readouterr().err


def test_bad_config_is_a_message_and_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {path: /m}\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml" in err and "adapters" in err
