"""Differential-privacy answers (mode dp): the epsilon is checked against the policy's floor and maximum,
rounded up to whole micro-epsilon and charged to the tenant's and the room's budgets BEFORE any noisy value
exists; a cell is released on a noisy distinct-shopper count >= k (the existence delta bounded by the policy and
accounted); values are noisy (OpenDP's Laplace, or seeded for synthetic markets); nothing exact is released
about suppressed cells.

Outcome independence: whether a dp query is answered, with what status, error text, shape and charge,
depends only on the query, the policy, the public schema and the ledger, never on the data except through
the noise. An empty population answers like any other (its aggregates are 0 before the noise). ``max_groups``
is decided AFTER the charge, on the noisy counts: the released cells with the highest noisy counts, at most
``max_groups`` of them (``truncated`` says whether more passed the threshold). What is left: a grouping with
more than :data:`CELL_CAP` exact cells fails after its charge (the number of exact cells is data); the cap is
far above any release a policy allows."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from cleanroom.dp import MICRO, EpsilonLedger, existence_delta, laplace, min_count_epsilon, to_micro
from cleanroom.errors import PolicyViolation
from cleanroom.history import Release
from cleanroom.policy import CleanRoomPolicy, DPPolicy
from cleanroom.query import CompiledQuery, Query
from cleanroom.results import QueryResult, jsonable
from cleanroom.schema import INTEGER_METRICS
from cleanroom.store import EventStore

DP_REASON = "a cell is released only when its noisy count of distinct shoppers is at least k"
CELL_CAP = 1_000_000  # exact cells one dp query may compute (after its charge); see the module contract


def price(dp: DPPolicy, q: Query, c: CompiledQuery, k: int) -> tuple[int, float]:
    """What the query costs: (micro-epsilon, existence delta); PolicyViolation outside the policy's epsilon
    floor and maximum, or when the delta of deciding which cells exist would pass its bound."""
    asked = float(q.epsilon if q.epsilon is not None else dp.epsilon_per_query)
    if asked < dp.min_epsilon_per_query:
        raise PolicyViolation(
            f"epsilon {asked:g} is below the policy's floor {dp.min_epsilon_per_query:g} per query"
        )
    if asked > dp.max_epsilon_per_query:
        raise PolicyViolation(
            f"epsilon {asked:g} is above the policy's {dp.max_epsilon_per_query:g} per query"
        )
    micro = to_micro(asked)
    L = dp.max_cells_per_shopper
    delta = existence_delta(k, L, micro / MICRO * dp.count_share) if c.dimensions else 0.0
    if delta > dp.max_delta_per_query:
        need = min_count_epsilon(k, L, dp.max_delta_per_query) / dp.count_share
        hint = (
            f"ask for at least epsilon={math.ceil(need * 1000) / 1000:g}"
            if need <= dp.max_epsilon_per_query
            else "this policy cannot release grouped cells at this k; query without dimensions"
        )
        raise PolicyViolation(
            f"epsilon {asked:g} is too small to decide which cells exist within the policy's delta "
            f"{dp.max_delta_per_query:g} per query: {hint}"
        )
    return micro, delta


def _release(
    rows: list[dict[str, Any]],
    noisy_n: list[float],
    noisy: dict[str, list[float]],
    c: CompiledQuery,
    k: int,
    max_groups: int,
) -> tuple[list[dict[str, Any]], bool]:
    """The cells whose noisy count is >= k, at most ``max_groups`` (those with the highest noisy counts),
    with their noisy metrics (clamped at 0, integers rounded); and whether more passed than were released."""
    passed = [i for i in range(len(rows)) if noisy_n[i] >= k]
    truncated = len(passed) > max_groups  # decided on noisy counts, after the charge
    if truncated:
        passed = sorted(sorted(passed, key=lambda i: -noisy_n[i])[:max_groups])
    cells = []
    for i in passed:
        out = {d: rows[i][d] for d in c.dimensions}
        for m in c.metrics:
            v = max(noisy[m][i], 0.0)
            out[m] = round(v) if m in INTEGER_METRICS else round(v, 2)
        cells.append(out)
    return cells, truncated


def answer_dp(
    store: EventStore,
    policy: CleanRoomPolicy,
    ledger: EpsilonLedger,
    noise_seed: int | None,
    ask: tuple[str, Query, CompiledQuery, str, int],
    charged: list[dict[str, Any]],
) -> tuple[QueryResult, Release]:
    """The noisy release of a compiled query (see the module contract); ``ask``: (tenant, query, compiled
    query, stored-answer key, k). The charge is appended to ``charged`` as soon as it is made."""
    tenant, q, c, key, k = ask
    dp: DPPolicy = policy.dp
    micro, delta = price(dp, q, c, k)
    epsilon = micro / MICRO
    L = dp.max_cells_per_shopper
    eps_count = epsilon * dp.count_share
    eps_metric = epsilon * (1 - dp.count_share) / len(c.metrics)
    budgets = (to_micro(dp.epsilon_budget), to_micro(dp.room_epsilon_budget))
    charged.append(ledger.charge(tenant, micro, delta, budgets, key))  # before anything depends on the data
    rows = store.cells(c, CELL_CAP)  # exact values exist only in memory here; nothing noisy yet
    seed = None
    if noise_seed is not None:  # simulated noise (synthetic markets): reproducible per query
        seed = int(hashlib.sha256(f"{noise_seed}|{key}".encode()).hexdigest()[:16], 16)
    noisy_n, spent = laplace([r["__n"] or 0 for r in rows], L, eps_count, seed)
    noisy: dict[str, list[float]] = {}
    for i, m in enumerate(c.metrics):
        noisy[m], eps = laplace(
            [r[m] or 0 for r in rows],  # an empty population sums to NULL: 0, then noise like any other
            L * dp.metric_bounds[m],
            eps_metric,
            None if seed is None else seed + i + 1,
        )
        spent += eps
    cells, truncated = _release(rows, noisy_n, noisy, c, k, policy.max_groups)
    if spent > epsilon * (1 + 1e-9):  # OpenDP's map agrees with our split, or we refuse to release
        raise RuntimeError(f"privacy map {spent} exceeds the charge {epsilon}")
    result = QueryResult(
        cells,
        None,
        DP_REASON,
        None,
        False,
        c.blocked_fields,
        epsilon_spent=epsilon,
        noisy=True,
        delta_spent=delta,
        truncated=truncated,
    )
    release = Release(
        key, q.model_dump(mode="json"), store.version, {}, c.where_sql, c.ck_sql, jsonable(c.params)
    )
    return result, release
