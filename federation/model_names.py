"""OpenAI ``model`` names: ``<base>`` or ``<base>:<stack>``, where a stack is one adapter or several
(``acme``, ``acme@2``, ``retail_media+acme+brand_x*0.5+planning``; see :mod:`adapters.stack`).

Contract: :func:`parse_model_name` returns a :class:`ModelRef` or raises :class:`ModelNameError`
(malformed) or :class:`UnknownModel` (a base model this deployment does not serve). It never
touches the filesystem: adapter ids are validated as ids, so a name can never be a path.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters import InvalidAdapter
from adapters.stack import StackPart, parse_stack, stack_text
from federation.errors import InvalidRequest, NotFound


class ModelNameError(InvalidRequest):
    """The model name is malformed."""


class UnknownModel(NotFound):
    """The model name asks for a base model this deployment does not serve."""


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
        raise ModelNameError("'model' must be a non-empty string like 'base' or 'base:adapter'")
    if len(name) > 600:
        raise ModelNameError("'model' is longer than 600 characters")
    base, sep, rest = name.partition(":")
    if base != served_name:
        raise UnknownModel(f"model {name!r} does not exist; this deployment serves {served_name!r}")
    if not sep:
        return ModelRef(base=base)
    try:
        return ModelRef(base=base, parts=parse_stack(rest))
    except InvalidAdapter as e:
        raise ModelNameError(f"malformed model name {name!r}: {e}") from e
