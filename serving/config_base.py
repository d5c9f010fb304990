"""What every config section shares: strict pydantic models, the config error, YAML loading at the edge.

Contract: :func:`load_yaml_model` returns a validated model or raises :class:`ConfigError` whose message
names the file and the offending field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid; the message names file and field."""


class Strict(BaseModel):
    """A config section: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path | str, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Read the YAML file at ``path`` into ``model``; ConfigError names the file and the fields."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping, got {type(raw).__name__}")
    raw.update(overrides or {})
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid config in {path}:\n{_format_errors(e)}") from e
