"""Brand safety measured: precision and recall per claim class for the rules alone, the model alone and the
two combined, on the shipped labelled sets (``tests/data/governance_lines.jsonl``, 216 lines written with the
rules; ``governance_lines_heldout.jsonl``, 60 lines written afterwards and never used to tune them).

The model is the demo's SmolLM2-135M (base, no adapter), in-process vLLM, greedy, guided JSON
(:data:`planning.governance.MODEL_SCHEMA`), the prompt of :func:`planning.governance.model_messages`.
Combined = the documented rule (:func:`planning.governance.combine`): a line is flagged for a class when the
rules find it, or when the model alone does (it then waits for a reviewer). Writes
``bench/results/governance.json``. Usage: ``python -m bench.governance [--no-model]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from bench.record import write_results

SETS = {
    "development": "tests/data/governance_lines.jsonl",
    "held_out": "tests/data/governance_lines_heldout.jsonl",
}
COMPETITORS = ["Starbucks", "Folgers", "Nescafe", "Dunkin", "Maxwell House", "Lavazza", "Peet's", "Nespresso"]


def _scores(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Per class: precision, recall, and the counts behind them; and the share of lines classified exactly."""
    from planning.governance import CLAIM_CLASSES

    out: dict[str, Any] = {}
    for cls in CLAIM_CLASSES:
        tp = sum(cls in r[key] and cls in r["claims"] for r in rows)
        fp = sum(cls in r[key] and cls not in r["claims"] for r in rows)
        fn = sum(cls not in r[key] and cls in r["claims"] for r in rows)
        out[cls] = {
            "precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "recall": round(tp / (tp + fn), 3) if tp + fn else None,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
    out["lines_exact"] = round(sum(set(r[key]) == set(r["claims"]) for r in rows) / len(rows), 3)
    out["ok_lines_flagged"] = sum(bool(r[key]) for r in rows if not r["claims"])
    return out


async def _model_claims(texts: list[str]) -> list[list[str] | None]:
    from planning.governance import model_request, parse_model_claims
    from serving.demo.defaults import default_config
    from serving.engines.vllm_engine import VLLMEngine
    from serving.replies import Body

    cfg = default_config()
    engine = VLLMEngine(cfg.model, cfg.engine)
    await engine.start()

    async def one(text: str) -> list[str] | None:
        body = model_request(cfg.model.served_name, text)
        answer: dict[str, Any] = {}
        async for item in engine.handle("chat", body):
            if isinstance(item, Body):
                answer = item.body
        return parse_model_claims(answer["choices"][0]["message"]["content"] or "")

    try:
        return list(await asyncio.gather(*(one(t) for t in texts)))
    finally:
        engine.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-model", action="store_true", help="rules only (no vLLM)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from planning.governance import CLAIM_CLASSES, GovernancePolicy, combine, find_claims

    policy = GovernancePolicy(blocked_claims=list(CLAIM_CLASSES), competitors=COMPETITORS)
    results: dict[str, Any] = {"competitors": COMPETITORS, "sets": {}}
    for name, path in SETS.items():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        for r in rows:
            r["rules"] = sorted(find_claims(r["text"], COMPETITORS))
        entry: dict[str, Any] = {"lines": len(rows), "rules": _scores(rows, "rules")}
        if not args.no_model:
            answers = asyncio.run(_model_claims([r["text"] for r in rows]))
            for r, claims in zip(rows, answers, strict=True):
                r["model"] = claims or []
                r["model_parsed"] = claims is not None
                verdict = {
                    "decision": "rejected" if r["rules"] else "ok",
                    "claims": dict.fromkeys(r["rules"]),
                }
                combined = combine({**verdict, "violations": [], "ok": not r["rules"]}, claims, policy)
                r["combined"] = sorted(set(r["rules"]) | set(claims or []))
                r["combined_decision"] = combined["decision"]
            entry["model"] = _scores(rows, "model")
            entry["model"]["answers_parsed"] = sum(r["model_parsed"] for r in rows)
            entry["combined"] = _scores(rows, "combined")
            entry["combined"]["pending"] = sum(r["combined_decision"] == "pending" for r in rows)
        entry["misses"] = [
            {k: r[k] for k in ("text", "claims", "rules", "model") if k in r}
            for r in rows
            if set(r["rules"]) != set(r["claims"])
        ]
        results["sets"][name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if k != "misses"})[:1500], flush=True)
    results["model"] = None if args.no_model else "SmolLM2-135M-Instruct (demo, base), guided JSON"
    write_results(Path("bench/results/governance.json"), results)


if __name__ == "__main__":
    main()
