"""OpenAI ``model`` names: ``<base>`` or ``<base>:<adapter>[@<version>]`` (ray.serve.llm's convention).

Contract: :func:`parse_model_name` returns a :class:`ModelRef` or raises :class:`ModelNameError`
(``status`` 400 for a malformed name, 404 for a base model this deployment does not serve). It never
touches the filesystem: adapter ids are validated as ids, so a name can never be a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ADAPTER_RE = re.compile(r"^(?P<id>[a-z0-9][a-z0-9_\-]{0,63})(@(?P<version>[0-9]+(\.[0-9]+){0,2}))?$")


class ModelNameError(ValueError):
    """The model name is malformed (400) or names an unknown base model (404)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelRef:
    """A parsed model name."""

    base: str
    adapter: str | None = None
    version: str | None = None

    def lora_name(self, version: str) -> str:
        """The vLLM LoRA name (and multiplexed model id) of this adapter at ``version``."""
        if self.adapter is None:
            raise ValueError("the base model has no LoRA name")
        return f"{self.base}:{self.adapter}@{version}"


def parse_model_name(name: object, served_name: str) -> ModelRef:
    """Parse an OpenAI ``model`` field for a deployment whose base model is ``served_name``."""
    if not isinstance(name, str) or not name:
        raise ModelNameError("'model' must be a non-empty string like 'base' or 'base:adapter'", 400)
    if len(name) > 200:
        raise ModelNameError("'model' is longer than 200 characters", 400)
    base, sep, rest = name.partition(":")
    if base != served_name:
        raise ModelNameError(f"model {name!r} does not exist; this deployment serves {served_name!r}", 404)
    if not sep:
        return ModelRef(base=base)
    m = _ADAPTER_RE.fullmatch(rest)
    if m is None:
        raise ModelNameError(
            f"malformed model name {name!r}: expected '{served_name}:<adapter>[@<version>]' where <adapter> "
            "is 1-64 of a-z, 0-9, '_', '-'",
            400,
        )
    return ModelRef(base=base, adapter=m.group("id"), version=m.group("version"))
