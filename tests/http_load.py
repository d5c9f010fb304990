"""HTTP load for the Serve tier's fault and overload tests: one request's outcome, and an open-loop load run in a
process of its own (``python -m tests.http_load`` reads its job as JSON on stdin and writes the outcomes as JSON).

Why a process of its own: the pytest process by then holds every earlier test's objects, so its garbage
collector and event loop add their pauses to what the load measures; an attacker's client does not share the
server's test runner. An outcome: ``status`` (None: no answer at all), ``shaped`` (an error in OpenAI's shape),
``s`` (seconds until the answer), ``headers``, ``text`` (the first 200 characters of an error) and ``at``
(seconds since the first request of this process).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

T0: dict[str, float] = {}


async def one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    """POST ``body`` to ``url``'s chat completions: its outcome (see the module contract)."""
    t = time.monotonic()
    T0.setdefault("t", t)
    try:
        r = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=15)
    except Exception as e:  # no answer at all: what must never happen
        return {"status": None, "error": repr(e), "s": time.monotonic() - t}
    shaped = True
    if r.status_code != 200:
        try:
            err = r.json()["error"]
            shaped = isinstance(err["message"], str) and err["code"] == r.status_code
        except Exception:
            shaped = False
    return {
        "status": r.status_code,
        "shaped": shaped,
        "s": time.monotonic() - t,
        "headers": dict(r.headers),
        "text": r.text[:200] if r.status_code != 200 else "",
        "at": round(t - T0["t"], 2),
    }


async def _open_loop(
    url: str, body: dict[str, Any], headers: dict[str, str], rate: float, n: int
) -> list[Any]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=500)) as c:
        tasks = []
        start = time.monotonic()
        for i in range(n):  # open loop: arrivals do not wait for answers
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(c, url, body, headers)))
        return list(await asyncio.gather(*tasks))


def open_loop(
    url: str, body: dict[str, Any], headers: dict[str, str], rate: float, seconds: float
) -> list[dict[str, Any]]:
    """``rate * seconds`` requests of ``body`` arriving at ``rate`` a second whatever the answers, sent from a
    fresh process: their outcomes."""
    job = {"url": url, "body": body, "headers": headers, "rate": rate, "n": int(rate * seconds)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.http_load"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load process failed ({done.returncode}): {done.stderr[-2000:]}")
    out: list[dict[str, Any]] = json.loads(done.stdout)
    return out


if __name__ == "__main__":
    job = json.load(sys.stdin)
    results = asyncio.run(_open_loop(job["url"], job["body"], job["headers"], job["rate"], job["n"]))
    json.dump(results, sys.stdout)
