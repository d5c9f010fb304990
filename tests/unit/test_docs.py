"""The docs stay true: every config field is in docs/configuration.md; README is the front door (the two
commands first, links that resolve); every deploy example validates (test_config)."""

from pathlib import Path

import pytest

from serving.config import AppConfig

ROOT = Path(__file__).resolve().parents[2]


def _fields(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        args = getattr(field.annotation, "__args__", (field.annotation,))
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        out += _fields(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]
    return out


@pytest.mark.parametrize("field", _fields(AppConfig))
def test_config_field_documented(field: str) -> None:
    assert f"`{field}`" in (ROOT / "docs" / "configuration.md").read_text()


def test_config_reference_is_current() -> None:
    import subprocess
    import sys

    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert table in (ROOT / "docs" / "configuration.md").read_text(), (
        "run scripts/config_reference.py --update"
    )


def test_readme_links_resolve_and_it_stays_short() -> None:
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), target


def test_quick_start_commands_come_first() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.index("make demo") < text.index("## Architecture")
    assert text.index("make test") < text.index("## Architecture")


def test_every_bench_json_says_where_it_comes_from() -> None:
    import json

    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        run = json.loads(path.read_text())["run"]
        assert run["commit"] and run["date"] and run["command"].startswith("python -m bench."), path.name
        assert run["machine"]["cores"], path.name
        assert (
            f"bench/results/{path.name}" in "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
            or path.stem.split("-")[0] in (ROOT / "docs" / "benchmarks.md").read_text()
        ), path.name
