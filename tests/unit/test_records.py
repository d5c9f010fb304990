"""Records beside the registry (serving/records.py): training jobs and usage counts outlive their boards —
a new cluster reads what the old one wrote, from a directory or an object store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.records import Records, RecordsUnavailable


def stores(tmp_path: Path, s3: Any) -> list[Records]:
    return [
        Records(tmp_path / "registry"),
        Records(s3.make_bucket("rmn-records") + "/adapters", s3.options()),
    ]


def test_documents_round_trip_in_a_directory_and_an_object_store(tmp_path: Path, s3: Any) -> None:
    for records in stores(tmp_path, s3):
        assert records.read("jobs/job-1.json") is None
        records.write("jobs/job-1.json", {"state": "queued"})
        records.write("jobs/job-1.json", {"state": "running", "step": 3})  # replaced whole
        assert records.read("jobs/job-1.json") == {"state": "running", "step": 3}
    # beside the adapters, in a dot-directory the registry does not list
    from adapters import AdapterRegistry

    assert (tmp_path / "registry" / ".rmn-records" / "jobs" / "job-1.json").is_file()
    assert AdapterRegistry(tmp_path / "registry", max_rank=16).ids() == []


def test_an_unreachable_store_is_an_error_callers_can_catch(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RecordsUnavailable, match=r"writing usage\.json failed"):
        Records(blocker).write("usage.json", {})


def test_a_new_job_board_reads_the_old_ones_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.training_jobs as tj

    monkeypatch.setattr(tj, "PERSIST_S", 0.0)
    records = Records(tmp_path / "registry")
    old = tj.JobBoard(records=records)
    done = old.create("brand_x", "x_tone", {"steps": 30}, 12)["id"]
    old.update(done, state="running")
    old.update(done, step=30, loss=0.5)
    old.update(done, state="succeeded", adapter="x_tone@2")
    running = old.create("brand_x", "x_other", {"steps": 30}, 12)["id"]
    old.update(running, state="running", step=4)
    new = tj.JobBoard(records=records)  # a new cluster: nothing in memory
    assert new.get(done) == {**old.get(done)}  # type: ignore[arg-type]
    assert new.get(done)["adapter"] == "x_tone@2"  # type: ignore[index]
    lost = new.get(running)
    assert lost is not None and lost["state"] == "interrupted" and lost["step"] == 4
    assert new.get("job-nope") is None
    assert tj.JobBoard().get(done) is None  # without records: memory only, as before


def test_a_new_usage_board_goes_on_counting(tmp_path: Path) -> None:
    import serving.usage as usage

    records = Records(tmp_path / "registry")
    old = usage.UsageBoard(records)
    old.add({"rm@1": (3, 100.0), "acme@2": (1, 50.0)})
    new = usage.UsageBoard(records)
    assert new.get(["rm"]) == {"rm@1": (3, 100.0)}
    new.add({"rm@1": (2, 200.0)})
    assert usage.UsageBoard(records).get(["rm", "acme"]) == {"rm@1": (5, 200.0), "acme@2": (1, 50.0)}
