"""Training an adapter as a cluster job (``POST /v1/adapters/train``): a Ray task, progress on a job board.

A job trains a PEFT LoRA on the tenant's (prompt, response) pairs with :func:`adapters.training.train_lora`
as a Ray task (one GPU where the cluster has one, else one CPU), then registers the result as the tenant's
private adapter (next version, every registration check) in the registry. The training data exists only in the
task's arguments (Ray's object store) and the job's scratch directory, which is deleted when the task ends,
whatever happens. Progress (state, step, loss, held-out loss before/after, the adapter it made or the error)
lives on :class:`JobBoard`, one named Ray actor per registry, so every router replica answers
``GET /v1/adapters/jobs/{id}``. The board keeps the last 1,000 jobs in memory and writes each job beside the
registry (:mod:`serving.records`, ``jobs/<id>.json``) when it is created, when its state changes and at most
every ``PERSIST_S`` seconds of progress; a new cluster (or a recreated board) reads a job it does not hold from
there, and a job that was queued or running when its cluster went away reads as ``interrupted``.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters import AdapterRegistry, InvalidAdapter
from adapters.corpus import parse_pairs
from federation.errors import InvalidRequest, first_error
from federation.tenants import Tenant
from serving.adapter_api import upload_fields
from serving.adapters_config import AdaptersConfig
from serving.errors import Overloaded
from serving.records import Records, RecordsUnavailable, detached_board

log = logging.getLogger("ray.serve")
BOARD_NAME = "rmn-adapter-jobs"


class TrainSettings(BaseModel):
    """Training settings of ``POST /v1/adapters/train`` (form fields); bounded so one tenant cannot hog
    the cluster."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(default=8, ge=1, le=64, description="LoRA rank.")
    alpha: int = Field(default=16, ge=1, le=512, description="LoRA alpha.")
    steps: int = Field(default=30, ge=1, le=2000, description="Optimizer steps.")
    lr: float = Field(default=2e-3, gt=0, le=1, description="Learning rate.")
    batch: int = Field(default=8, ge=1, le=64, description="Pairs per step.")
    seq_len: int = Field(default=96, ge=16, le=2048, description="Tokens per training sequence.")
    seed: int = Field(default=0, ge=0, le=2**31, description="Seed (deterministic on CPU).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1, description="Modules to adapt."
    )


MANIFEST_FIELDS = ("id", "kind", "description")


def parse_train_request(
    tenant: Tenant, fields: dict[str, str], data: bytes, registry: AdapterRegistry, max_rank: int
) -> tuple[TrainSettings, dict[str, Any], list[tuple[str, str]]]:
    """The settings, manifest fields (without a version: the job takes the next one when it registers) and
    pairs of a ``POST /v1/adapters/train``; InvalidRequest or PermissionDenied naming what is wrong."""
    raw: dict[str, Any] = {k: v for k, v in fields.items() if k not in MANIFEST_FIELDS}
    if "target_modules" in raw:
        raw["target_modules"] = [m for m in raw["target_modules"].split(",") if m]
    try:
        settings = TrainSettings.model_validate(raw)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise InvalidRequest(f"training setting {loc}: {msg}") from e
    if settings.rank > max_rank:
        raise InvalidRequest(f"rank {settings.rank} is above engine.max_lora_rank {max_rank}")
    manifest = upload_fields(tenant, {k: v for k, v in fields.items() if k in MANIFEST_FIELDS}, registry)
    manifest.pop("version")
    try:
        pairs = parse_pairs(data.decode("utf-8"), "data.jsonl", max_records=100_000)
    except UnicodeDecodeError as e:
        raise InvalidRequest("data.jsonl is not UTF-8 text") from e
    except InvalidAdapter as e:
        raise InvalidRequest(str(e)) from e
    return settings, manifest, pairs


PERSIST_S = 5.0
_LIVE = ("queued", "running")


class JobBoard:
    """Job records by id (Ray actor; see the module docstring). ``records``: where they persist."""

    def __init__(self, keep: int = 1000, records: Records | None = None) -> None:
        self._jobs: dict[str, dict[str, Any]] = {}
        self._keep = keep
        self._records = records
        self._persisted: dict[str, float] = {}

    def create(self, tenant: str, adapter_id: str, settings: dict[str, Any], records: int) -> dict[str, Any]:
        job_id = "job-" + uuid.uuid4().hex[:16]
        job = {
            "id": job_id,
            "tenant": tenant,
            "adapter_id": adapter_id,
            "state": "queued",
            "created": time.time(),
            "records": records,
            "settings": settings,
            "step": 0,
            "steps": settings["steps"],
            "loss": None,
            "heldout_loss_before": None,
            "heldout_loss_after": None,
            "adapter": None,
            "error": None,
        }
        self._jobs[job_id] = job
        while len(self._jobs) > self._keep:
            self._persisted.pop(next(iter(self._jobs)), None)
            self._jobs.pop(next(iter(self._jobs)))
        self._persist(job_id)
        return dict(job)

    def update(self, job_id: str, **fields: Any) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        changed = "state" in fields and fields["state"] != job["state"]
        job.update(fields)
        if changed or time.monotonic() - self._persisted.get(job_id, 0.0) >= PERSIST_S:
            self._persist(job_id)

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is None and self._records is not None:
            try:
                job = self._records.read(f"jobs/{job_id}.json")
            except RecordsUnavailable:
                job = None
            if job is not None and job.get("state") in _LIVE:  # its cluster went away while it ran
                job = {**job, "state": "interrupted", "error": "the cluster running this job went away"}
        return None if job is None else dict(job)

    def _persist(self, job_id: str) -> None:
        if self._records is None:
            return
        try:
            self._records.write(f"jobs/{job_id}.json", self._jobs[job_id])
            self._persisted[job_id] = time.monotonic()
        except RecordsUnavailable as e:  # kept in memory; written again on the next change
            log.warning("job %s not persisted: %s", job_id, e)


def board(records: Records | None = None) -> Any:
    """The cluster's job board (created on first use, persisting to ``records``; detached, so it outlives the
    replica that made it)."""
    return detached_board(JobBoard, BOARD_NAME, records)


@dataclass(frozen=True)
class JobSpec:
    """Everything a training task needs (it runs on any node that has the base model and the registry);
    ``device``: the one its :class:`Placement` chose (``cuda`` | ``cpu``; ``auto``: what torch sees)."""

    job_id: str
    model_dir: str
    adapters: AdaptersConfig
    max_rank: int
    pairs: list[tuple[str, str]]
    settings: dict[str, Any]
    manifest: dict[str, Any]
    device: str = "auto"


@dataclass(frozen=True)
class Placement:
    """Where a training job runs: the torch device, and what its Ray task asks for."""

    device: str  # cuda | cpu
    num_gpus: int
    resources: dict[str, float]


def placement(
    mode: str, group: dict[str, float], available: dict[str, float], total: dict[str, float]
) -> Placement:
    """Where a job runs (``adapters.training_device`` ``mode``, ``training_resources`` ``group``), given the
    cluster's ``available`` and ``total`` Ray resources now: ``cpu`` on CPU; with a training group, on a GPU in
    it (the job waits for the group); else on a GPU free now, or — none free — on CPU (``auto``) or refused
    (``gpu``: :class:`Overloaded`, 503 + Retry-After). A job never waits on GPUs the engines hold: with them
    all taken a GPU request would queue for as long as the engines run. Refused too when no node offers the
    group's resources or a GPU at all (it would wait for ever)."""
    if mode == "cpu":
        return Placement("cpu", 0, {})
    if group:
        missing = sorted(k for k, v in {**group, "GPU": 1.0}.items() if total.get(k, 0) < v)
        if missing:
            raise Overloaded(
                f"no node offers the training group's resources {missing} (adapters.training_resources): "
                "a job would wait for ever; add the group or change the config",
                60,
            )
        return Placement("cuda", 1, dict(group))
    if available.get("GPU", 0) >= 1:
        return Placement("cuda", 1, {})
    if mode == "gpu":
        held = "the engines hold every GPU" if total.get("GPU", 0) >= 1 else "the cluster has no GPU"
        raise Overloaded(
            f"no GPU is free for training ({held}; adapters.training_device: gpu): retry later, or train on "
            "CPU with training_device auto or cpu",
            30,
        )
    return Placement("cpu", 0, {})


def run_job(spec: JobSpec, board_handle: Any) -> dict[str, Any]:
    """The Ray task: train in a scratch directory, register, report; the scratch directory is removed."""
    import shutil
    import tempfile
    from pathlib import Path

    from adapters.training import pick_device, train_lora

    def report(**fields: Any) -> None:
        board_handle.update.remote(spec.job_id, **fields)

    scratch = Path(tempfile.mkdtemp(prefix=f"rmn-{spec.job_id}-"))
    try:
        device = pick_device() if spec.device == "auto" else spec.device
        report(state="running", device=device, started=time.time())
        train_lora(
            spec.model_dir,
            spec.pairs,
            scratch / "adapter",
            desc=spec.job_id,
            device=device,
            on_step=lambda step, loss: report(step=step, loss=round(loss, 5)),
            on_heldout=lambda which, loss: report(
                **{"heldout_loss_before" if which == "base" else "heldout_loss_after": round(loss, 5)}
            ),
            **spec.settings,
        )
        registry = spec.adapters.registry(spec.max_rank)
        fields = {**spec.manifest, "version": registry.next_version(spec.manifest["id"])}
        base = Path(spec.model_dir)
        m = registry.register(scratch / "adapter", base_model_dir=base, base_model=base.name, **fields)
        report(state="succeeded", adapter=f"{m.id}@{m.version}", finished=time.time())
        return {"adapter": f"{m.id}@{m.version}"}
    except Exception as e:  # reported on the board; the task itself ends normally
        report(state="failed", error=f"{type(e).__name__}: {e}", finished=time.time())
        return {"error": str(e)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def submit(spec: JobSpec, board_handle: Any, where: Placement) -> Any:
    """Start :func:`run_job` as a Ray task placed as ``where`` says (one CPU, and a GPU and the training
    group's resources when it trains on one)."""
    import dataclasses

    import ray

    task = ray.remote(num_cpus=1, num_gpus=where.num_gpus, resources=dict(where.resources), max_retries=0)
    return task(run_job).remote(dataclasses.replace(spec, device=where.device), board_handle)
