"""The clean room over one retailer's DuckDB file: load data, answer structured queries under policy.

Contract of :meth:`CleanRoom.query`:
- who asks is a :class:`Querier` (tenant id + the brands it may see); a brand-scoped tenant's queries
  cover its own brands' rows only (a filter on another brand: :class:`AccessDenied`), a cross-brand
  benchmark only where the policy offers one, at its coarse grain and a higher k;
- mode dp (the default): the epsilon is within the policy's floor and maximum, rounded up to whole
  micro-epsilon and charged to the tenant's AND the room's persisted budgets BEFORE any noisy value
  exists; cells are released on a noisy distinct-shopper count >= k (the existence delta is bounded
  by the policy and accounted); values are noisy; nothing exact is released about suppressed cells;
  a query that fails after its charge stays charged and is audited as failed;
- mode exact: trusted tenants only; cells with >= k DISTINCT shoppers; the combined remainder only when
  it has >= k too; refuses a release whose populations (each cell's rows and the union of its cells)
  differ from any earlier release's of the room (any tenant's) by fewer than k shoppers (0 included,
  unless both select rows alike: :func:`cleanroom.exact.check_differences`); how many cells were
  withheld only where the policy opts in;
- an identical repeated query (same data, same scope) gets the identical stored answer, charging
  nothing; every query is audited durably (accepted, refused, failed); refusal texts never state exact
  counts or sizes.

Loads are append-only batches, each file once (by sha256) and each ``event_id`` once; each row carries
its batch (the data version) and a row number, so an earlier release's populations can be recomputed
exactly for difference checks.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cleanroom.audit import QueryAudit
from cleanroom.dp import MICRO, EpsilonLedger, to_micro
from cleanroom.errors import AccessDenied, DataChanged, PolicyViolation, QueryFailed
from cleanroom.exact import answer_exact, check_differences
from cleanroom.history import ReleaseHistory
from cleanroom.policy import CleanRoomPolicy
from cleanroom.private import answer_dp
from cleanroom.query import Query, compile_query
from cleanroom.results import LoadReport, Querier, QueryResult
from cleanroom.store import EventStore

__all__ = ["CleanRoom", "LoadReport", "Querier", "QueryResult"]


class CleanRoom:
    """One retailer's events in a file-backed DuckDB database, queried under its policy: the front that
    orchestrates a query (scope, stored answers, the exact or the dp answer, audit) over the event store.

    ``state``: path stem of the durable state (``<state>.epsilon.jsonl``, ``.releases.jsonl``,
    ``.audit.jsonl``); default the database path without its suffix. Keep it with the deployment's
    durable state: a room rebuilt over the same stem keeps its budgets and stored answers.
    ``noise_seed``: simulated (seeded) noise, for synthetic markets only. ``storage_options`` (fsspec) reach
    attached object-store files; ``memory_limit`` bounds DuckDB (it spills to disk beyond)."""

    def __init__(
        self,
        db_path: Path | str,
        policy: CleanRoomPolicy,
        audit_path: Path | str | None = None,
        state: Path | str | None = None,
        noise_seed: int | None = None,
        storage_options: dict[str, Any] | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self.policy = policy
        stem = str(state) if state is not None else str(Path(db_path).with_suffix(""))
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        self.history = ReleaseHistory(Path(stem + ".releases.jsonl"))
        self.audit = QueryAudit(audit_path or stem + ".audit.jsonl")
        self.ledger = EpsilonLedger(Path(stem + ".epsilon.jsonl"), policy.dp.budget_refresh_days)
        self.noise_seed = noise_seed
        self.store = EventStore(db_path, storage_options, memory_limit)
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        """The last loaded batch (the data version)."""
        return self.store.version

    @property
    def data_id(self) -> str:
        """Identifies the data a query sees (stored answers are keyed by it)."""
        return self.store.data_id

    # ---- data --------------------------------------------------------------------------------
    def load(self, path: Path | str, mapping: dict[str, str] | None = None) -> int:
        """:meth:`load_file`, returning the number of rows loaded (0 for a file loaded before)."""
        return self.load_file(path, mapping).rows

    def load_file(self, path: Path | str, mapping: dict[str, str] | None = None) -> LoadReport:
        """Append a CSV or Parquet file as a new batch (:meth:`cleanroom.store.EventStore.load_file`)."""
        with self._lock:
            return self.store.load_file(path, mapping, self.policy.value_bounds)

    def attach(
        self, source: str, mapping: dict[str, str] | None = None, progress: bool = False
    ) -> LoadReport:
        """Read the Parquet files of ``source`` in place as a new batch, where the policy allows
        (:meth:`cleanroom.store.EventStore.attach`)."""
        if not self.policy.attach_files:
            raise PolicyViolation(
                f"{self.policy.retailer}'s policy does not allow attaching files (`attach_files: true`): "
                "load them instead (copied into the room's file)"
            )
        with self._lock:
            return self.store.attach(source, mapping, self.policy.value_bounds, progress)

    def close(self) -> None:
        """Release the DuckDB file (another process may open it then)."""
        self.store.close()

    # ---- budgets -----------------------------------------------------------------------------
    def budget(self, tenant: str, room_view: bool = False) -> dict[str, Any]:
        """``tenant``'s differential-privacy budget: total, spent, remaining (epsilon), what it may still spend
        (``epsilon_available``: its remaining, less when the room's own budget has less left), delta spent, the
        per-query default, floor and maximum, and when the period ends. The room-wide figures (other tenants'
        activity) only with ``room_view`` (admins, the retailer's operators)."""
        dp, on = self.policy.dp, self.policy.dp_on
        spent, room, delta = self.ledger.spent(tenant)
        own_left = max(to_micro(dp.epsilon_budget) - spent, 0)
        room_left = max(to_micro(dp.room_epsilon_budget) - room, 0)
        view = {
            "retailer": self.policy.retailer,
            "tenant": tenant,
            "mode": self.policy.mode,
            "dp": on,
            "epsilon_budget": dp.epsilon_budget if on else None,
            "epsilon_spent": spent / MICRO,
            "epsilon_remaining": own_left / MICRO if on else None,
            "epsilon_available": min(own_left, room_left) / MICRO if on else None,
            "delta_spent": delta,
            "epsilon_per_query": dp.epsilon_per_query if on else None,
            "min_epsilon_per_query": dp.min_epsilon_per_query if on else None,
            "max_epsilon_per_query": dp.max_epsilon_per_query if on else None,
            "period_ends": self.ledger.period_ends() if on else None,
        }
        if room_view:
            view["room_epsilon_budget"] = dp.room_epsilon_budget if on else None
            view["room_epsilon_spent"] = room / MICRO
            view["room_epsilon_remaining"] = room_left / MICRO if on else None
        return view

    # ---- queries -----------------------------------------------------------------------------
    def querier(self, tenant: str) -> Querier:
        """A local caller (CLI, tests) by tenant id, scoped by the policy alone (it must declare it)."""
        return Querier(tenant, self.policy.brand_scope(tenant))

    def query(self, who: Querier | str, q: Query) -> QueryResult:
        """Answer ``q`` for ``who`` under the policy (see the module contract)."""
        querier = who if isinstance(who, Querier) else self.querier(who)
        tenant, policy = querier.tenant, self.policy
        if policy.dp_on and q.epsilon is None:
            q = q.model_copy(update={"epsilon": policy.dp.epsilon_per_query})
        scope = "*" if querier.brands is None else ",".join(sorted(querier.brands))
        with self._lock:
            try:
                self.store.verify()  # attached files still hold the bytes their data version names
            except DataChanged as e:
                self._audit(tenant, q, "failed", None, reason=str(e))
                raise
            refusal = self._refusal(tenant, q, querier)  # before any stored answer: trust can be revoked
            if refusal is not None:
                self._audit(tenant, q, "refused", None, reason=str(refusal))
                raise refusal
            key = f"{self.data_id}|{policy.mode}|{scope}|{q.model_dump_json()}"
            cached = self.history.cached(tenant, key)
            if cached is not None:
                result = QueryResult(
                    **{**cached, "epsilon_spent": 0.0, "delta_spent": 0.0, "stored_answer": True}
                )
                self._audit(
                    tenant, q, "accepted", result, reason="identical to an earlier query: stored answer"
                )
                return result
            charged: list[dict[str, Any]] = []
            withheld: int | None = None  # exact mode: cells below k (audited even when not reported)
            try:
                c = compile_query(q, policy, self.version, querier.brands)
                k = policy.k * (
                    policy.benchmark.k_factor if q.scope == "benchmark" and policy.benchmark else 1
                )
                if policy.dp_on:
                    result, release = answer_dp(
                        self.store, policy, self.ledger, self.noise_seed, (tenant, q, c, key, k), charged
                    )
                else:
                    result, release, withheld = answer_exact(self.store, policy, c, key, q, k)
                    check_differences(self.store, self.history, policy.identity_column, c, release, k)
                result.check_finite()
            except PolicyViolation as e:
                self._audit(tenant, q, "refused", None, reason=str(e))
                raise
            except Exception as e:
                eps = charged[0]["micro"] / MICRO if charged else 0.0
                why = f"query failed: {type(e).__name__}" + (
                    " (its epsilon stays charged)" if charged else ""
                )
                self._audit(tenant, q, "failed", None, reason=f"{why}: {e}"[:500], epsilon=eps)
                raise QueryFailed(why) from e
            self.history.remember(tenant, release, asdict(result))
            self._audit(tenant, q, "accepted", result, epsilon=result.epsilon_spent, withheld=withheld)
            return result

    def _refusal(self, tenant: str, q: Query, querier: Querier) -> AccessDenied | None:
        """Who may not ask this at all, decided on the policy and the caller alone: exact answers for trusted
        partners only (checked on every call, stored answers included: a partner removed from
        ``trusted_tenants`` gets nothing more), benchmark answers only for a tenant that sees some brand."""
        policy = self.policy
        if not policy.dp_on and tenant not in policy.trusted_tenants:
            return AccessDenied(
                f"{policy.retailer}'s clean room answers exactly (no noise) for trusted partners only"
            )
        if q.scope == "benchmark" and querier.brands is not None and not querier.brands:
            return AccessDenied(
                "benchmark answers compare a tenant's brands with their category: this tenant sees no brand here"
            )
        return None

    def audit_refusal(self, tenant: str, query: object, reason: str) -> None:
        """Audit a query refused before it could be parsed or run (malformed, rate-limited)."""
        text = query if isinstance(query, dict) else {"unparsed": str(query)[:2000]}
        self.audit.record(
            retailer=self.policy.retailer,
            tenant=tenant,
            query=text,
            decision="refused",
            reason=reason,
            cells_released=0,
            cells_suppressed=0,
            epsilon_spent=0.0,
        )

    def _audit(
        self,
        tenant: str,
        q: Query,
        decision: str,
        result: QueryResult | None,
        reason: str = "",
        epsilon: float = 0.0,
        withheld: int | None = None,
    ) -> None:
        self.audit.record(
            retailer=self.policy.retailer,
            tenant=tenant,
            query=q.model_dump(mode="json"),
            decision=decision,
            reason=reason,
            mode=self.policy.mode,
            cells_released=len(result.cells) if result else 0,
            cells_suppressed=withheld if withheld is not None else (result.suppressed_cells if result else 0),
            epsilon_spent=epsilon,
            delta_spent=result.delta_spent if result and epsilon else 0.0,
        )
