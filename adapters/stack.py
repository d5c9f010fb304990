"""Adapter stacks: an ordered, weighted list of registered adapters and its content-addressed id.

Text form (used as the OpenAI model suffix and as the multiplexed model id, so an engine replica can
rebuild the recipe from the id alone): ``acme@1+brand_x@2*0.5+planning@1`` — ``id[@version][*weight]``
joined by ``+``; weight 1 is omitted. The composite id hashes what determines the weights: the base
revision, each component's sha256 and weight, in order, and the method — a changed component yields a
new composite, never a stale one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

from adapters.errors import InvalidAdapter

MAX_COMPONENTS = 8
METHOD = "cat"
_PART_RE = re.compile(
    r"^(?P<id>[a-z0-9][a-z0-9_\-]{0,63})(@(?P<version>[0-9]+(\.[0-9]+){0,2}))?(\*(?P<weight>[0-9]+(\.[0-9]+)?))?$"
)


@dataclass(frozen=True)
class StackPart:
    """One component reference; ``version`` None means 'latest' until resolved."""

    id: str
    version: str | None = None
    weight: float = 1.0

    def text(self) -> str:
        """Canonical text of this part."""
        out = self.id + (f"@{self.version}" if self.version else "")
        return out if self.weight == 1.0 else f"{out}*{self.weight:g}"


def parse_stack(text: str) -> tuple[StackPart, ...]:
    """Parse ``a[@v][*w]+b...``; raises InvalidAdapter with the reason."""
    parts = text.split("+")
    if len(parts) > MAX_COMPONENTS:
        raise InvalidAdapter(f"a stack has at most {MAX_COMPONENTS} components, got {len(parts)}")
    out = []
    for raw in parts:
        m = _PART_RE.fullmatch(raw)
        if m is None:
            raise InvalidAdapter(
                f"malformed stack component {raw!r}: expected <adapter>[@<version>][*<weight>] with <adapter> "
                "1-64 of a-z, 0-9, '_', '-'"
            )
        weight = float(m.group("weight")) if m.group("weight") else 1.0
        if not (0 < weight <= 10 and math.isfinite(weight)):
            raise InvalidAdapter(f"component weight must be in (0, 10], got {weight:g} in {raw!r}")
        out.append(StackPart(m.group("id"), m.group("version"), weight))
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise InvalidAdapter(f"a stack names each adapter once, got {ids}")
    return tuple(out)


def stack_text(parts: tuple[StackPart, ...]) -> str:
    """Canonical text of a stack."""
    return "+".join(p.text() for p in parts)


def composite_id(base_revision: str, components: list[tuple[str, float]], method: str = METHOD) -> str:
    """Content address of a composition: ``c`` + 24 hex of sha256 over (base, sha256s, weights, method)."""
    payload = json.dumps(
        {"base": base_revision, "components": [[s, float(w)] for s, w in components], "method": method},
        sort_keys=True,
    )
    return "c" + hashlib.sha256(payload.encode()).hexdigest()[:24]
