"""The shipped demo adapters are used only where they still fit: this base revision, corpus and description."""

from __future__ import annotations

import json

import pytest

from serving.demo import shipped
from serving.demo.corpora import DEMO_ADAPTERS


def test_every_demo_adapter_is_shipped_with_its_record() -> None:
    record = json.loads(shipped.RECORD.read_text())
    assert (
        set(record["adapters"]) == set(DEMO_ADAPTERS)
        and record["command"] == "python -m serving.demo.shipped"
    )
    for adapter_id in DEMO_ADAPTERS:
        cfg = json.loads((shipped.SHIPPED / adapter_id / "adapter_config.json").read_text())
        assert cfg["r"] == 8 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
        path = shipped.shipped_adapter(adapter_id, record["base_model_revision"])
        assert path == shipped.SHIPPED / adapter_id


def test_a_shipped_adapter_is_stale_on_another_base_corpus_or_description(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    revision = json.loads(shipped.RECORD.read_text())["base_model_revision"]
    assert shipped.shipped_adapter("acme_retail", "0" * 64) is None  # another base model
    monkeypatch.setattr(shipped, "demo_pairs", lambda adapter_id: [("q", "a changed corpus")])
    assert shipped.shipped_adapter("acme_retail", revision) is None
    monkeypatch.undo()
    changed = {**DEMO_ADAPTERS, "acme_retail": {**DEMO_ADAPTERS["acme_retail"], "description": "new words"}}
    monkeypatch.setattr(shipped, "DEMO_ADAPTERS", changed)
    assert shipped.shipped_adapter("acme_retail", revision) is None
    assert shipped.shipped_adapter("retail_media", revision) is not None
