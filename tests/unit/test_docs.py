"""README stays true: every config field is documented; every deploy example validates (test_config)."""

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
def test_config_field_in_readme(field: str) -> None:
    assert f"`{field}`" in (ROOT / "README.md").read_text()


def test_quick_start_commands_come_first() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.index("make demo") < text.index("## Architecture")
    assert text.index("make test") < text.index("## Architecture")
