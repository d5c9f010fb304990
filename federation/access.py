"""The federation gate of the router: who is calling, may they, and which stack serves them.

Contract: :meth:`Gate.admit` authenticates (401) and rate-limits (429) a request; :meth:`Gate.resolve`
turns (model name, ``federation`` object, prompt) into a version-pinned stack or None for the base
model, raising the federation's refusal (:mod:`federation.errors`, :class:`Forbidden`; adapter errors as
they are). Without a federation config the gate is open: no tenant, explicit stacks only. Every decision is
audited, refusals with the status ``status_of`` (the serving edge's error model) gives them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from adapters import (
    AdapterError,
    AdapterManifest,
    AdapterNotFound,
    AdapterRegistry,
    AdapterRetired,
    Visibility,
)
from adapters.cache import ResolvedStack, check_rank, resolve
from federation.audit import AuditLog
from federation.config import FederationConfig
from federation.errors import (
    FederationError,
    InvalidRequest,
    NoLongerServed,
    NotFound,
    RateLimited,
    first_error,
)
from federation.model_names import parse_model_name
from federation.policy import Decision, FederationRequest, check_access, decide
from federation.ratelimit import RateLimiter
from federation.tenants import AuthError, Tenant


@dataclass(frozen=True)
class Resolution:
    """What serves a request."""

    decision: Decision
    stack: ResolvedStack | None


def prompt_text(body: dict[str, Any]) -> str:
    """The text the task classifier reads: a completion's prompt, or a chat's LAST user message (in a
    multi-turn agent conversation the current ask decides the task)."""
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    messages = body.get("messages")
    for msg in reversed(messages if isinstance(messages, list) else []):
        if isinstance(msg, dict) and msg.get("role") == "user" and isinstance(msg.get("content"), str):
            return str(msg["content"])
    return ""


def _refusal(e: Exception, model: object) -> Exception:
    """The federation's refusal for a resolution failure: the error itself, or one saying what the model
    name asked for."""
    if isinstance(e, ValidationError):
        loc, msg = first_error(e)
        return InvalidRequest(f"invalid 'federation' object: {loc}: {msg}")
    if isinstance(e, AdapterRetired):
        return NoLongerServed(f"model {model!r} is no longer served: {e}")
    if isinstance(e, AdapterNotFound):
        return NotFound(f"model {model!r} does not exist: {e}")
    return e  # FederationError (names, policy, access), InvalidAdapter, RegistryUnavailable


class Gate:
    """Authentication, rate limits, stack resolution and access control for one router replica."""

    def __init__(
        self,
        federation: FederationConfig | None,
        registry: AdapterRegistry,
        served_name: str,
        max_rank: int,
        compress_overflow: bool = False,
        status_of: Callable[[BaseException], int] | None = None,
    ) -> None:
        """``federation`` None: an open gate. ``max_rank``/``compress_overflow``: the engine's slot size and
        whether larger stacks are compressed (else refused before any replica sees them). ``status_of``: the
        answer's status for a refusal, recorded in the audit log (None: not recorded)."""
        self._status_of = status_of
        self._registry = registry
        self._served_name = served_name
        self._max_rank = max_rank
        self._compress = compress_overflow
        fed = federation
        self._policy = fed.policy if fed else None
        self.enabled = fed is not None
        self._tenants = fed.directory() if fed else None
        self._limiter = RateLimiter()
        self._audit = AuditLog(fed.audit_log if fed else None)

    def admit(self, authorization: str | None) -> Tenant | None:
        """The calling tenant (None when the gate is open); raises AuthError or RateLimited (this gate's own
        bucket: per router replica; :class:`serving.cluster_limits.ClusterLimiter` holds limits cluster-wide)."""
        tenant = self.authenticate(authorization)
        if tenant is not None:
            self.check_rate(tenant, self._limiter.acquire(tenant.id, tenant.rate_limit_per_minute))
        return tenant

    def authenticate(self, authorization: str | None) -> Tenant | None:
        """The calling tenant, not rate-limited (None when the gate is open); raises AuthError."""
        return None if self._tenants is None else self._tenants.authenticate(authorization)

    @staticmethod
    def check_rate(tenant: Tenant, wait_s: float) -> None:
        """Raise RateLimited when ``wait_s`` (a limiter's answer for ``tenant``) is above 0."""
        if wait_s > 0:
            raise RateLimited(
                f"rate limit of {tenant.rate_limit_per_minute} requests/minute exceeded for "
                f"tenant {tenant.id!r}",
                math.ceil(wait_s),
            )

    def identify(self, authorization: str | None) -> str | None:
        """The tenant id a key belongs to, without rate limiting (for audit records); None if unknown."""
        if self._tenants is None:
            return None
        try:
            return self._tenants.authenticate(authorization).id
        except AuthError:
            return None

    def audit(self, **fields: Any) -> None:
        """Append one record to the federation audit log (adapter registrations and retirements)."""
        self._audit.record(**fields)

    def visible(self, tenant: Tenant | None, manifest: AdapterManifest) -> bool:
        """Whether ``tenant`` may see (and use) an adapter; private ones stay invisible to others."""
        return tenant is None or tenant.may_use(
            manifest.id, manifest.owner, manifest.visibility == Visibility.private
        )

    def _kind(self, adapter_id: str) -> str:
        return self._registry.get(adapter_id).kind.value

    def resolve(self, tenant: Tenant | None, body: dict[str, Any], request_id: str) -> Resolution:
        """The stack for this request (see the module contract); audited whether allowed or not."""
        model = body.get("model")
        common = {
            "event": "compose",
            "request_id": request_id,
            "tenant": tenant.id if tenant else None,
            "model": model,
        }
        try:
            ref = parse_model_name(model, self._served_name)
            fed_raw = body.get("federation")
            federation = FederationRequest.model_validate(fed_raw) if fed_raw is not None else None
            if tenant is None and (federation is not None or [p.id for p in ref.parts] == ["auto"]):
                raise InvalidRequest("'federation' and model 'base:auto' need tenants (federation config)")
            if tenant is None or self._policy is None:
                decision = Decision(ref.parts, (), "explicit" if ref.parts else "base")
            else:
                decision = decide(
                    tenant,
                    ref.parts,
                    federation,
                    prompt_text(body),
                    self._policy,
                    self._kind,
                )
            stack = resolve(self._registry, decision.parts) if decision.parts else None
            if tenant is not None and stack is not None:
                check_access(tenant, stack.manifests)
            if stack is not None:  # refused here already, before any replica is involved
                check_rank(stack, self._max_rank, self._compress)
        except (FederationError, ValidationError, AdapterError) as e:
            err = _refusal(e, model)
            status = self._status_of(err) if self._status_of else None
            self._audit.record(**common, decision="denied", status=status, reason=str(err))
            if err is e:
                raise
            raise err from e
        self._audit.record(
            **common,
            decision="allowed",
            source=decision.source,
            task_source=decision.task_source,
            task=decision.task,
            task_confidence=decision.task_confidence,
            stack=stack.text if stack else None,
            composite_id=stack.composite_id if stack else None,
        )
        return Resolution(decision, stack)
