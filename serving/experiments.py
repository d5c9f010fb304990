"""A/B experiments of adapter stacks: a tenant splits traffic between two or more stacks, the router assigns
each request by a caller-supplied unit id (OpenAI's ``user``), and outcomes reported by request id are joined
to the arm that answered.

Contract:
- :func:`assign` is deterministic: sha256(experiment id, unit id) mapped into the arms' cumulative shares, so a
  unit always gets the same arm and arms receive their shares (checked over 10,000 ids within 3 points);
- :class:`ExperimentBoard` (pure Python; one detached Ray actor per registry in a Serve app,
  :func:`experiment_board`) holds each tenant's experiments (at most ``MAX_PER_TENANT``), per-arm request and
  outcome counts, and the arm of the last ``KEEP_REQUESTS`` request ids; experiments and counts are written beside
  the registry (``.rmn-records/experiments.json``) and read back by a new cluster (the request-id map is not:
  feedback on a request served by an earlier cluster is 404). A tenant sees and changes only its own
  experiments (another's is 404, like one that does not exist);
- states: ``running`` (assigning), ``paused`` (every request gets the first arm, the control, unrecorded),
  ``stopped`` (requests 410; results stay readable);
- :func:`summary` gives per arm the rates of each binary outcome (click, accept, conversion) with Wilson 95 %
  intervals and a two-proportion z-test against the control arm, and the mean rating with its interval.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from federation.errors import InvalidRequest, NotFound
from serving.records import Records, RecordsUnavailable, board_call, detached_board

log = logging.getLogger("ray.serve")
BOARD_NAME = "rmn-experiments"
DOCUMENT = "experiments.json"
MAX_PER_TENANT = 20
KEEP_REQUESTS = 200_000
BINARY = ("click", "accept", "conversion")
Outcome = Literal["click", "accept", "conversion", "rating"]


class ExperimentStopped(NotFound):
    """The experiment was stopped: it assigns nothing more (HTTP 410)."""


class ExperimentExists(InvalidRequest):
    """An experiment of that id exists (HTTP 409)."""


class Arm(BaseModel):
    """One arm: a name, the stack it serves (a model name as in a chat request) and its traffic share."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_\-]{0,31}$", description="Arm name (the first is the control)."
    )
    model: str = Field(
        min_length=1, max_length=512, description="Model name: `base`, `base:<stack>`, `base:auto`."
    )
    share: float = Field(gt=0, le=1, description="Share of the traffic (shares are normalised to sum to 1).")


class ExperimentSpec(BaseModel):
    """``POST /v1/experiments``: an id and two to ten arms."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$", description="Experiment id (per tenant).")
    arms: list[Arm] = Field(min_length=2, max_length=10, description="The arms; the first is the control.")

    @field_validator("arms")
    @classmethod
    def _distinct(cls, v: list[Arm]) -> list[Arm]:
        if len({a.name for a in v}) < len(v):
            raise ValueError("arm names must be distinct")
        return v


class Feedback(BaseModel):
    """``POST /v1/feedback``: an outcome of a request an experiment answered."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128, description="The answer's x-request-id.")
    outcome: Outcome = Field(description="click | accept | conversion | rating.")
    value: float | None = Field(default=None, ge=1, le=5, description="The rating (1-5); only for rating.")


def assign(experiment: str, unit: str, arms: list[dict[str, Any]]) -> dict[str, Any]:
    """The arm of ``unit`` (deterministic; arms' ``share`` normalised)."""
    u = int(hashlib.sha256(f"{experiment}\x1f{unit}".encode()).hexdigest()[:15], 16) / 16**15
    total = sum(a["share"] for a in arms)
    edge = 0.0
    for arm in arms:
        edge += arm["share"] / total
        if u < edge:
            return arm
    return arms[-1]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of H0: p1 == p2, pooled standard error."""
    if min(n1, n2) == 0:
        return 0.0, 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k2 / n2 - k1 / n1) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def summary(exp: dict[str, Any]) -> dict[str, Any]:
    """The experiment with per-arm statistics (see the module contract)."""
    arms = exp["arms"]
    control = exp["counts"][arms[0]["name"]]
    out = []
    for arm in arms:
        c = exp["counts"][arm["name"]]
        n = c["requests"]
        rates = {}
        for kind in BINARY:
            k = min(c[kind], n)
            lo, hi = wilson(k, n)
            row: dict[str, Any] = {
                "count": c[kind],
                "rate": round(k / n, 4) if n else None,
                "ci95": [round(lo, 4), round(hi, 4)],
            }
            if arm is not arms[0]:
                z, p = two_proportion_z(min(control[kind], control["requests"]), control["requests"], k, n)
                row |= {"z_vs_control": round(z, 3), "p_value": round(p, 5)}
            rates[kind] = row
        r = c["ratings"]
        mean = r["sum"] / r["n"] if r["n"] else None
        sd = math.sqrt(max(r["sumsq"] / r["n"] - mean * mean, 0.0)) if mean is not None else None
        half = 1.96 * sd / math.sqrt(r["n"]) if sd is not None and r["n"] > 1 else None
        rating = {"n": r["n"], "mean": None if mean is None else round(mean, 3)}
        rating["ci95"] = (
            None if half is None or mean is None else [round(mean - half, 3), round(mean + half, 3)]
        )
        out.append({**arm, "requests": n, "outcomes": rates, "rating": rating})
    return {k: v for k, v in exp.items() if k != "counts"} | {"arms": out}


def _counts() -> dict[str, Any]:
    return {"requests": 0, **dict.fromkeys(BINARY, 0), "ratings": {"n": 0, "sum": 0.0, "sumsq": 0.0}}


class ExperimentBoard:
    """See the module contract."""

    def __init__(self, records: Records | None = None) -> None:
        self._records = records
        self._exps: dict[tuple[str, str], dict[str, Any]] = {}
        self._requests: OrderedDict[str, tuple[str, str, str]] = OrderedDict()  # rid -> (tenant, exp, arm)
        self._written = 0.0
        if records is not None:
            try:
                for exp in records.read(DOCUMENT) or []:
                    self._exps[(exp["tenant"], exp["id"])] = exp
            except RecordsUnavailable as e:
                log.warning("experiments not read back: %s", e)

    def create(self, tenant: str, spec: ExperimentSpec | dict[str, Any]) -> dict[str, Any]:
        s = ExperimentSpec.model_validate(spec)  # validated at the gateway (read_model); a dict from tests
        if (tenant, s.id) in self._exps:
            raise ExperimentExists(f"experiment {s.id!r} exists (stop it, or pick another id)")
        if sum(t == tenant for t, _ in self._exps) >= MAX_PER_TENANT:
            raise InvalidRequest(f"a tenant may keep at most {MAX_PER_TENANT} experiments")
        arms = [a.model_dump() for a in s.arms]
        exp = {"tenant": tenant, "id": s.id, "state": "running", "created": time.time(), "arms": arms}
        exp["counts"] = {a["name"]: _counts() for a in arms}
        self._exps[(tenant, s.id)] = exp
        self._persist(force=True)
        return summary(exp)

    def spec(self, tenant: str, exp_id: str) -> dict[str, Any]:
        """What a router needs to assign: state and arms."""
        exp = self._get(tenant, exp_id)
        return {"id": exp_id, "state": exp["state"], "arms": exp["arms"]}

    def get(self, tenant: str, exp_id: str) -> dict[str, Any]:
        return summary(self._get(tenant, exp_id))

    def all_of(self, tenant: str) -> list[dict[str, Any]]:
        return [summary(e) for (t, _), e in self._exps.items() if t == tenant]

    def set_state(self, tenant: str, exp_id: str, state: str) -> dict[str, Any]:
        exp = self._get(tenant, exp_id)
        if exp["state"] == "stopped":
            raise ExperimentStopped(f"experiment {exp_id!r} is stopped")
        exp["state"] = state
        self._persist(force=True)
        return summary(exp)

    def record(self, batch: list[tuple[str, str, str, str]]) -> None:
        """Requests answered by an arm: (request id, tenant, experiment, arm)."""
        for rid, tenant, exp_id, arm in batch:
            exp = self._exps.get((tenant, exp_id))
            if exp is None or arm not in exp["counts"]:
                continue
            exp["counts"][arm]["requests"] += 1
            self._requests[rid] = (tenant, exp_id, arm)
            self._requests.move_to_end(rid)
        while len(self._requests) > KEEP_REQUESTS:
            self._requests.popitem(last=False)
        self._persist()

    def feedback(self, tenant: str, fb: Feedback | dict[str, Any]) -> dict[str, Any]:
        f = Feedback.model_validate(fb)
        found = self._requests.get(f.request_id)
        if found is None or found[0] != tenant:
            raise NotFound(f"no experiment request {f.request_id!r} of this tenant (recent requests only)")
        _, exp_id, arm = found
        c = self._exps[(tenant, exp_id)]["counts"][arm]
        if f.outcome == "rating":
            if f.value is None:
                raise InvalidRequest("a rating needs a value (1-5)")
            c["ratings"]["n"] += 1
            c["ratings"]["sum"] += f.value
            c["ratings"]["sumsq"] += f.value * f.value
        else:
            c[f.outcome] += 1
        self._persist()
        return {"experiment": exp_id, "arm": arm, "outcome": f.outcome}

    def _get(self, tenant: str, exp_id: str) -> dict[str, Any]:
        exp = self._exps.get((tenant, exp_id))
        if exp is None:
            raise NotFound(f"no experiment {exp_id!r} of this tenant")
        return exp

    def _persist(self, force: bool = False) -> None:
        if self._records is None or (not force and time.monotonic() - self._written < 5.0):
            return
        try:
            self._records.write(DOCUMENT, list(self._exps.values()))
            self._written = time.monotonic()
        except RecordsUnavailable as e:  # kept in memory; written with a later change
            log.warning("experiments not persisted: %s", e)


def experiment_board(records: Records | None = None) -> Any:
    """The cluster's experiment board (a detached actor named per registry, created on first use)."""
    return detached_board(ExperimentBoard, BOARD_NAME, records)


SPEC_TTL_S = 2.0
FLUSH_S = 1.0


class Experiments:
    """The gateway's side: assigns requests (experiment specs cached ``SPEC_TTL_S``) and sends the assignments
    to the board in batches (every ``FLUSH_S``), so no request waits on the board but a first look-up."""

    def __init__(self, records: Records, shared: bool) -> None:
        self._records = records
        self._local = None if shared else ExperimentBoard(records)
        self._specs: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._pending: list[tuple[str, str, str, str]] = []
        self._task: Any = None

    async def call(self, method: str, *args: Any) -> Any:
        """``ExperimentBoard.<method>(*args)`` wherever the board lives."""
        return await board_call(self._local, lambda: experiment_board(self._records), method, *args)

    async def arm_for(self, tenant: str, exp_id: str, unit: str) -> tuple[dict[str, Any], bool]:
        """(the arm serving ``unit``, whether the request counts): running -> its arm; paused -> the control,
        uncounted; stopped -> :class:`ExperimentStopped`."""
        now = time.monotonic()
        cached = self._specs.get((tenant, exp_id))
        if cached is None or now - cached[0] > SPEC_TTL_S:
            cached = (now, await self.call("spec", tenant, exp_id))
            self._specs[(tenant, exp_id)] = cached
        spec = cached[1]
        if spec["state"] == "stopped":
            raise ExperimentStopped(f"experiment {exp_id!r} is stopped")
        if spec["state"] == "paused":
            return spec["arms"][0], False
        return assign(exp_id, unit, spec["arms"]), True

    def forget(self, tenant: str, exp_id: str) -> None:
        """Drop a cached spec (its state changed through this router)."""
        self._specs.pop((tenant, exp_id), None)

    def note(self, request_id: str, tenant: str, exp_id: str, arm: str) -> None:
        """A request answered by ``arm`` (sent with the next batch)."""
        import asyncio

        self._pending.append((request_id, tenant, exp_id, arm))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        import asyncio

        await asyncio.sleep(FLUSH_S)
        await self.flush()

    async def flush(self) -> None:
        """Send the pending assignments (kept for the next flush when the board cannot be reached)."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self.call("record", batch)
        except Exception as e:
            log.warning("experiment assignments not recorded yet: %s", e)
            self._pending = batch + self._pending
