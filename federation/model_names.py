"""OpenAI ``model`` names: ``<base>`` or ``<base>:<stack>``, where a stack is one adapter or several
(``acme``, ``acme@2``, ``retail_media+acme+brand_x*0.5+planning``; see :mod:`adapters.stack`).

Contract: :func:`parse_model_name` returns a :class:`ModelRef` or raises :class:`ModelNameError`
(``status`` 400 for a malformed name, 404 for a base model this deployment does not serve). It never
touches the filesystem: adapter ids are validated as ids, so a name can never be a path.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters import InvalidAdapter
from adapters.stack import StackPart, parse_stack, stack_text


class ModelNameError(ValueError):
    """The model name is malformed (400) or names an unknown base model (404)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelRef:
    """A parsed model name: the base and the (possibly empty) adapter stack."""

    base: str
    parts: tuple[StackPart, ...] = ()

    @property
    def is_base(self) -> bool:
        """True when no adapter is asked for."""
        return not self.parts

    def name(self) -> str:
        """Canonical model name (``base`` or ``base:<stack text>``)."""
        return self.base if self.is_base else f"{self.base}:{stack_text(self.parts)}"


def parse_model_name(name: object, served_name: str) -> ModelRef:
    """Parse an OpenAI ``model`` field for a deployment whose base model is ``served_name``."""
    if not isinstance(name, str) or not name:
        raise ModelNameError("'model' must be a non-empty string like 'base' or 'base:adapter'", 400)
    if len(name) > 600:
        raise ModelNameError("'model' is longer than 600 characters", 400)
    base, sep, rest = name.partition(":")
    if base != served_name:
        raise ModelNameError(f"model {name!r} does not exist; this deployment serves {served_name!r}", 404)
    if not sep:
        return ModelRef(base=base)
    try:
        return ModelRef(base=base, parts=parse_stack(rest))
    except InvalidAdapter as e:
        raise ModelNameError(f"malformed model name {name!r}: {e}", 400) from e
