"""Print the config reference (Markdown) from the pydantic models' field descriptions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from serving.config import AppConfig


def rows(model: type[BaseModel], prefix: str = "", instance: Any = None) -> list[tuple[str, str, str]]:
    """(dotted field, effective default, description) for every leaf field."""
    out = []
    for name, field in model.model_fields.items():
        ann: Any = field.annotation
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        value = getattr(instance, name, None) if instance is not None else None
        if sub is not None:
            out += rows(sub, f"{prefix}{name}.", value)
            continue
        if field.is_required() and prefix in ("model.", "adapters."):
            default = "required"
        elif instance is not None:
            default = repr(value)
        else:
            default = repr(field.get_default(call_default_factory=True))
        out.append((f"{prefix}{name}", default, field.description or ""))
    return out


if __name__ == "__main__":
    print("| field | default | meaning |\n|---|---|---|")
    minimal = AppConfig.model_validate({"model": {"path": "/m"}, "adapters": {"root": "/r"}})
    for key, default, desc in rows(AppConfig, instance=minimal):
        print(f"| `{key}` | `{default}` | {desc} |")
