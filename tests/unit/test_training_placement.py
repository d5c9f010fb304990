"""Where a training job runs (serving/training_jobs.py ``placement``): never queued behind the engines' GPUs,
a training group waited for, CPU forced where asked, refusals that say why; and the job uses the device it was
placed on (a CPU job on a GPU node must not train on the GPU Ray did not give it)."""

from __future__ import annotations

import pytest

from serving.errors import Overloaded
from serving.training_jobs import JobSpec, Placement, placement, run_job

GPU_NODE = {"CPU": 16.0, "GPU": 1.0}
ENGINES_HOLD_IT = {"CPU": 12.0, "GPU": 0.0}


def test_auto_trains_on_a_free_gpu_and_on_cpu_when_the_engines_hold_them_all() -> None:
    assert placement("auto", {}, GPU_NODE, GPU_NODE) == Placement("cuda", 1, {})
    assert placement("auto", {}, ENGINES_HOLD_IT, GPU_NODE) == Placement("cpu", 0, {})
    assert placement("auto", {}, {"CPU": 2.0}, {"CPU": 2.0}) == Placement("cpu", 0, {})


def test_gpu_is_refused_with_the_reason_when_none_is_free_and_cpu_stays_on_cpu() -> None:
    with pytest.raises(Overloaded) as e:
        placement("gpu", {}, ENGINES_HOLD_IT, GPU_NODE)
    assert "the engines hold every GPU" in str(e.value) and e.value.retry_after_s == 30
    with pytest.raises(Overloaded, match="the cluster has no GPU"):
        placement("gpu", {}, {"CPU": 2.0}, {"CPU": 2.0})
    assert placement("gpu", {}, GPU_NODE, GPU_NODE) == Placement("cuda", 1, {})
    assert placement("cpu", {}, GPU_NODE, GPU_NODE) == Placement("cpu", 0, {})


def test_a_training_group_is_waited_for_and_one_nobody_offers_is_refused() -> None:
    group = {"training": 1.0}
    cluster = {**GPU_NODE, "GPU": 2.0, "training": 1.0}
    busy = {"CPU": 4.0, "GPU": 0.0, "training": 0.0}
    assert placement("auto", group, busy, cluster) == Placement("cuda", 1, group)  # waits for its group
    with pytest.raises(Overloaded, match=r"\['training'\]"):
        placement("gpu", group, GPU_NODE, GPU_NODE)
    assert placement("cpu", group, busy, cluster) == Placement("cpu", 0, {})


def test_the_job_trains_on_the_device_it_was_placed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import adapters.training as training

    seen: list[str] = []
    reports: list[dict[str, object]] = []

    def fake_train(*args: object, device: str, **kwargs: object) -> None:
        seen.append(device)
        raise RuntimeError("stop here")  # the device is what matters

    class Board:
        class update:  # a Ray actor method's shape: board.update.remote(...)
            @staticmethod
            def remote(job_id: str, **fields: object) -> None:
                reports.append(fields)

    monkeypatch.setattr(training, "train_lora", fake_train)
    monkeypatch.setattr(training, "pick_device", lambda: "cuda")  # a GPU node
    spec = JobSpec("job-1", "/nowhere", None, 8, [], {}, {}, device="cpu")  # type: ignore[arg-type]
    assert "stop here" in run_job(spec, Board())["error"]
    assert seen == ["cpu"] and reports[0]["device"] == "cpu"
