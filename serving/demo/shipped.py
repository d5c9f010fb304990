"""The demo adapters as shipped with the project: trained once by ``python -m serving.demo.shipped`` (the same
training the demo runs, so a first ``make demo`` needs none of its ~11 minutes), used only where they still fit.

Contract: :func:`shipped_adapter` returns the shipped PEFT directory of a demo adapter, or None when none is
shipped or it is stale: trained on another base model revision, or on a corpus or description that has changed
since (the record in ``shipped/SHIPPED.json`` keeps the base revision and, per adapter, the description and the
sha256 of its training pairs). Registration still checks the files against the base model as any upload.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from serving.demo.corpora import DEMO_ADAPTERS, demo_pairs

SHIPPED = Path(__file__).parent / "shipped"
RECORD = SHIPPED / "SHIPPED.json"
STEPS = 20  # training steps of each demo adapter (the demo trains with the same when nothing fits)


def corpus_sha256(adapter_id: str) -> str:
    """sha256 of an adapter's training pairs (a changed corpus makes the shipped adapter stale)."""
    return hashlib.sha256(json.dumps(demo_pairs(adapter_id)).encode()).hexdigest()


def shipped_adapter(adapter_id: str, base_revision: str) -> Path | None:
    """The shipped directory of ``adapter_id`` when it fits this base revision, corpus and description."""
    if not RECORD.is_file():
        return None
    record = json.loads(RECORD.read_text())
    entry = record.get("adapters", {}).get(adapter_id)
    fits = (
        entry is not None
        and record.get("base_model_revision") == base_revision
        and entry.get("description") == DEMO_ADAPTERS[adapter_id]["description"]
        and entry.get("corpus_sha256") == corpus_sha256(adapter_id)
    )
    path = SHIPPED / adapter_id
    return path if fits and (path / "adapter_model.safetensors").is_file() else None


def main() -> int:
    """Train every demo adapter on the demo model and write them with their record into ``shipped/``."""
    from adapters.training import train_lora
    from adapters.validate import base_revision
    from serving.demo.defaults import demo_model_dir
    from serving.modelprep.smollm2 import prepare_smollm2

    model_dir = prepare_smollm2(demo_model_dir())
    record = {
        "base_model_revision": base_revision(model_dir),
        "command": "python -m serving.demo.shipped",
        "steps": STEPS,
        "adapters": {},
    }
    SHIPPED.mkdir(exist_ok=True)
    for adapter_id, spec in DEMO_ADAPTERS.items():
        with tempfile.TemporaryDirectory() as tmp:
            report = train_lora(
                model_dir, demo_pairs(adapter_id), tmp, steps=STEPS, desc=f"train {adapter_id}"
            )
            out = SHIPPED / adapter_id
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(Path(tmp) / name, out / name)
        record["adapters"][adapter_id] = {  # type: ignore[index]
            "description": spec["description"],
            "corpus_sha256": corpus_sha256(adapter_id),
            "heldout_loss": [round(report.heldout_loss_base, 3), round(report.heldout_loss_adapter, 3)],
        }
        print(
            f"{adapter_id}: held-out loss {report.heldout_loss_base:.2f} -> {report.heldout_loss_adapter:.2f}"
        )
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {len(DEMO_ADAPTERS)} adapters and {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
