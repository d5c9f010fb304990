"""json_object on the demo model: vLLM's own grammar vs the bounded one (serving/engines/json_mode.py).

One in-process engine (SmolLM2-135M, the embedded defaults, no Ray); each prompt asks for JSON with
``response_format: json_object``, greedy, ``max_tokens`` 400 (the issue's failure was at 200), served both
ways in one run. Reports per mode: answers that parse as a JSON object, finish reasons, mean completion
tokens. Writes ``bench/results/json_mode.json``. Usage: ``python -m bench.json_mode``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from typing import Any

from bench.record import write_results

PROMPTS = [
    "Give me a JSON object describing a coffee ad campaign.",
    "Return JSON with keys name and age for a person named Bob who is 30.",
    "List three retail media channels as JSON.",
    "Describe a shampoo promotion plan in JSON with budget, channels and dates.",
    "Output a JSON object with a list of 5 snack product ideas.",
    "Summarise this week's sponsored product results as JSON.",
    "Write a JSON object with a headline and a call to action for a yogurt ad.",
    "As JSON: the top 3 categories by revenue and their share.",
    "Return a JSON object that maps each weekday to a daily budget.",
    "Give the campaign targeting settings (audience, reach, frequency) as JSON.",
    "Produce a JSON product card for a detergent: name, price, size, claims.",
    "JSON please: three creative variants for a cereal brand, each with a tone.",
]


async def _run(engine: Any, mode: str, max_tokens: int) -> dict[str, Any]:
    from serving.replies import Body

    cfg = engine.model_cfg
    engine.engine_cfg = engine.engine_cfg.model_copy(update={"json_object": mode})  # read per request
    rows = []
    for prompt in PROMPTS:
        body = {
            "model": cfg.served_name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        }
        answer: dict[str, Any] = {}
        async for item in engine.handle("chat", body):
            if isinstance(item, Body):
                answer = item.body
        choice = answer["choices"][0]
        text = choice["message"]["content"] or ""
        try:
            valid = isinstance(json.loads(text), dict)
        except json.JSONDecodeError:
            valid = False
        rows.append(
            {
                "prompt": prompt,
                "valid_object": valid,
                "finish_reason": choice["finish_reason"],
                "completion_tokens": answer["usage"]["completion_tokens"],
                "head": text[:120],
            }
        )
    return {
        "valid": sum(r["valid_object"] for r in rows),
        "of": len(rows),
        "length_stops": sum(r["finish_reason"] == "length" for r in rows),
        "mean_completion_tokens": round(statistics.mean(r["completion_tokens"] for r in rows), 1),
        "answers": rows,
    }


async def _both(max_tokens: int) -> dict[str, Any]:
    from serving.demo.defaults import default_config
    from serving.engines.vllm_engine import VLLMEngine

    cfg = default_config()
    engine = VLLMEngine(cfg.model, cfg.engine)
    await engine.start()
    try:
        return {mode: await _run(engine, mode, max_tokens) for mode in ("vllm", "bounded")}
    finally:
        engine.shutdown()


def main() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    max_tokens = 400
    results = asyncio.run(_both(max_tokens))
    for mode, r in results.items():
        print(f"{mode:8} valid {r['valid']}/{r['of']}  length stops {r['length_stops']}")
    write_results(
        "bench/results/json_mode.json",
        {"model": "smollm2-135m (demo)", "max_tokens": max_tokens, "modes": results},
    )


if __name__ == "__main__":
    main()
