"""What a failed engine call means, read from Ray's and Serve's exceptions however the handle wraps them.

Contract: :func:`is_backpressure` is True for Serve's queue-full rejection (nothing ran: safe to queue again);
:func:`replica_lost` is True when the engine replica died, became unreachable or was shutting down (the request
never ran to completion there: running it elsewhere is safe before anything reached the client). Both walk
the exception's causes. :func:`cancel` is a best-effort cancel of a handle call.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)


def _causes(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = getattr(cur, "cause", None) or cur.__cause__
    return seen


def is_backpressure(e: BaseException) -> bool:
    """True for Serve's queue-full rejection, however the handle wraps it."""
    return any(
        isinstance(c, BackPressureError) or "BackPressureError" in type(c).__name__ for c in _causes(e)
    )


def replica_lost(e: BaseException) -> bool:
    """True when the engine replica died, became unreachable or was draining."""
    names = ("ActorDiedError", "ActorUnavailableError")
    return any(isinstance(c, _LOST) or type(c).__name__ in names for c in _causes(e))


def cancel(call: Any) -> None:
    """Best-effort cancel; Serve's ``cancel()`` re-raises a failed assignment, which is no news here."""
    if call is not None:
        with contextlib.suppress(Exception):
            call.cancel()
